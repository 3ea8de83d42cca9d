"""The kit's one table: a row per check (check | result | figure | expected), printed for people and
written as JSON for scripts; the exit status says whether any check that ran failed."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PASS, FAIL = "pass", "FAIL"


@dataclass(frozen=True)
class Row:
    check: str
    result: str  # pass | FAIL | skipped: <why> | error: <what>
    figure: str = ""
    expected: str = ""

    @property
    def failed(self) -> bool:
        return self.result == FAIL or self.result.startswith("error")


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def render(rows: list[Row]) -> str:
    header = Row("check", "result", "figure", "expected")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("check", "result", "figure")]
    lines = []
    for row in [header, *rows]:
        cells = [row.check.ljust(widths[0]), row.result.ljust(widths[1]), row.figure.ljust(widths[2]), row.expected]
        lines.append(" | ".join(cells).rstrip())
    lines.insert(1, "-+-".join("-" * w for w in [*widths, len(header.expected)]))
    return "\n".join(lines)


def write_json(rows: list[Row], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


def exit_status(rows: list[Row]) -> int:
    """0 when every check that ran passed (skipped ones do not count), 1 when one failed."""
    return 1 if any(r.failed for r in rows) else 0
