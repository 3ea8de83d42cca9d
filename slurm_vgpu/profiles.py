"""Measured performance curves: what a named workload does on one GPU model at each SM share.

A profile run starts the workload once per share, on a real slice; the workload prints its own
figures on one line of its output, which is all slurm-vgpu reads of it::

    slurm-vgpu: throughput=412.5/s p50_ms=9.1 p99_ms=18.2

``throughput`` is requests (or batches) served per second; ``p50_ms``/``p99_ms`` the latency of one
request; an optional ``batch=8`` says the batch size the figures are for (1 when absent). The last
such line of an output counts, so a workload may print running figures as it warms up.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FIGURES_PREFIX = "slurm-vgpu:"
FIGURES_EXAMPLE = f"{FIGURES_PREFIX} throughput=412.5/s p50_ms=9.1 p99_ms=18.2"
_FIELDS = {"throughput": r"(\d+(?:\.\d+)?)/s", "p50_ms": r"(\d+(?:\.\d+)?)", "p99_ms": r"(\d+(?:\.\d+)?)",
           "batch": r"([1-9]\d*)"}
REQUIRED = ("throughput", "p50_ms", "p99_ms")
# Past the knee, more SMs stop helping: the smallest share whose throughput is within this fraction
# of the best share's (FaST-GShare's curves flatten past 40-50% of the SMs).
KNEE_FRACTION = 0.9


class FiguresError(ValueError):
    """A figures line that cannot be read; the message says what to print instead."""


@dataclass(frozen=True)
class Figures:
    throughput: float  # per second
    p50_ms: float
    p99_ms: float
    batch: int = 1


@dataclass(frozen=True)
class Point:
    """One measured point of a curve: ``name`` on ``model`` at ``share`` percent of its SMs."""
    name: str
    model: str
    share: int
    figures: Figures

    @property
    def throughput(self) -> float:
        return self.figures.throughput

    @property
    def p99_ms(self) -> float:
        return self.figures.p99_ms


def parse_figures(line: str) -> Figures:
    """One figures line (with its ``slurm-vgpu:`` prefix); FiguresError names what is wrong."""
    body = line.strip()
    if not body.startswith(FIGURES_PREFIX):
        raise FiguresError(f"{line.strip()!r} does not start with {FIGURES_PREFIX!r}; print e.g. {FIGURES_EXAMPLE!r}")
    values: dict[str, str] = {}
    for item in body[len(FIGURES_PREFIX):].split():
        key, sep, value = item.partition("=")
        if not sep or key not in _FIELDS:
            raise FiguresError(f"{item!r} in {body!r}: the fields are {', '.join(_FIELDS)} "
                               f"(e.g. {FIGURES_EXAMPLE!r})")
        match = re.fullmatch(_FIELDS[key], value)
        if match is None:
            example = {"throughput": "412.5/s", "batch": "8"}.get(key, "9.1")
            raise FiguresError(f"{item!r} in {body!r}: write {key}={example}")
        values[key] = match.group(1)
    missing = [key for key in REQUIRED if key not in values]
    if missing:
        raise FiguresError(f"{body!r} lacks {', '.join(missing)} (e.g. {FIGURES_EXAMPLE!r})")
    figures = Figures(float(values["throughput"]), float(values["p50_ms"]), float(values["p99_ms"]),
                      int(values.get("batch", 1)))
    if figures.p99_ms < figures.p50_ms or figures.p50_ms <= 0:
        raise FiguresError(f"{body!r}: latencies must be above 0 with p99_ms at least p50_ms")
    return figures


def last_figures(output: str) -> Figures | None:
    """The last figures line of a workload's output, None when it printed none; a malformed last
    line is an error (its message says what to print)."""
    lines = [line for line in output.splitlines() if line.strip().startswith(FIGURES_PREFIX)]
    return parse_figures(lines[-1]) if lines else None


def knee(points: Sequence[Point]) -> Point | None:
    """The smallest share of one curve (one name, model and batch) whose throughput is within
    :data:`KNEE_FRACTION` of its best: where more SMs stop helping."""
    if not points:
        return None
    best = max(p.throughput for p in points)
    return min((p for p in points if p.throughput >= KNEE_FRACTION * best), key=lambda p: p.share)


def curves(points: Iterable[Point]) -> dict[tuple[str, str, int], list[Point]]:
    """Points grouped by (name, model, batch), each curve in share order."""
    grouped: dict[tuple[str, str, int], list[Point]] = {}
    for point in points:
        grouped.setdefault((point.name, point.model, point.figures.batch), []).append(point)
    return {key: sorted(value, key=lambda p: p.share) for key, value in sorted(grouped.items())}


def throughput_at(curve: Sequence[Point], share: int) -> float:
    """One curve's throughput at ``share``: a measured share's own; between two measured shares,
    on the line between them; below the smallest, that point's throughput scaled down with the
    share; above the largest, the largest's (a curve only flattens past its knee)."""
    points = sorted(curve, key=lambda p: p.share)
    if not points:
        raise ValueError("an empty curve has no throughput")
    if share <= points[0].share:
        return points[0].throughput * share / points[0].share
    for low, high in zip(points, points[1:]):
        if share <= high.share:
            return low.throughput + (high.throughput - low.throughput) * (share - low.share) / (high.share - low.share)
    return points[-1].throughput
