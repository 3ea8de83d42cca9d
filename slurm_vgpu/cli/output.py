"""How every read command prints: a rich table for people, ``--json`` for scripts.

The JSON follows Slurm's own ``--json``: one top-level object with ``meta`` and the records under a
named key. Records carry every field; fields are only ever added, never renamed or removed, so
scripts written against one version keep working. Data goes to stdout, diagnostics to stderr.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the complete records as JSON (fields are only ever added).")


def meta() -> dict:
    return {"slurm_vgpu": {"version": version("slurm-vgpu")}}


def document(**content) -> dict:
    """The top-level JSON object: ``meta`` first, then the named content."""
    return {"meta": meta(), **content}


def echo_json(doc: dict) -> None:
    click.echo(json.dumps(doc, indent=2, default=_plain))


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict], object]
    justify: str = "left"
    wrap: bool = False  # long prose (reasons) wraps on a terminal; other columns never do


def echo_table(columns: Sequence[Column], records: Iterable[dict], title: str | None = None) -> None:
    table = Table(*[c.header for c in columns], box=box.SIMPLE_HEAD, title=title, title_justify="left",
                  pad_edge=False, show_edge=False)
    for column, rich_column in zip(columns, table.columns):
        rich_column.justify = column.justify
        rich_column.no_wrap = not column.wrap
    for record in records:
        table.add_row(*[_cell(column.value(record)) for column in columns])
    out = console()
    with out.capture() as captured:
        out.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def emit(as_json: bool, key: str, records: list[dict], columns: Sequence[Column], empty: str) -> None:
    """The common shape of a read command: JSON document, or a table (``empty`` on stderr if none)."""
    if as_json:
        echo_json(document(**{key: records}))
    elif records:
        echo_table(columns, records)
    else:
        click.echo(empty, err=True)


def console() -> Console:
    """A console as wide as the terminal, or unbounded when piped so that rows never wrap in scripts."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 100_000, highlight=False)


def ago(seconds: float | None) -> str:
    """``95`` -> ``1m35s``: how people read the age of a heartbeat or a wait."""
    if seconds is None:
        return "never"
    seconds = int(max(seconds, 0))
    for big, big_size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= big_size:
            return f"{seconds // big_size}{big}{(seconds % big_size) // small_size}{small}"
    return f"{seconds}s"


def gib(mib: int | None) -> str:
    return "-" if mib is None else f"{mib / 1024:.1f}G"


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    return str(value)


def _plain(value: object):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
