"""Slurm hostlists (``gpu[01-08,10]``, ``rack[1-2]n[1-4]``, ``a,b``) expanded without asking Slurm.

Admins paste these from ``sinfo`` and ``squeue``; the CLI must read them on hosts where Slurm is not
installed (a laptop running ``fleet``), so the expander is pure Python. Names come in the order
``scontrol show hostnames`` gives, except that a repeated name is kept once (a node named twice is
still one node to drain).
"""
from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class HostlistError(ValueError):
    pass


def expand(hostlist: str) -> list[str]:
    """``gpu[01-03],cpu1`` -> ``["gpu01", "gpu02", "gpu03", "cpu1"]``."""
    names: list[str] = []
    for item in _split_top_level(hostlist.strip(), hostlist):
        for name in _expand_item(item, hostlist):
            if name not in names:
                names.append(name)
    return names


def _split_top_level(text: str, whole: str) -> list[str]:
    """Split at commas outside brackets: ``a[1,2],b`` -> ``["a[1,2]", "b"]``."""
    items, depth, start = [], 0, 0
    for position, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise HostlistError(f"hostlist {whole!r}: brackets cannot nest")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"hostlist {whole!r}: ']' without '['")
        elif char == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    if depth:
        raise HostlistError(f"hostlist {whole!r}: '[' without ']'")
    items.append(text[start:])
    if any(not item.strip() for item in items):
        raise HostlistError(f"hostlist {whole!r}: empty host name (stray comma?)")
    return [item.strip() for item in items]


def _expand_item(item: str, whole: str) -> list[str]:
    """One name with any number of bracketed ranges; each bracket multiplies the names."""
    match = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", item)
    if not match:
        if any(c.isspace() for c in item):
            raise HostlistError(f"hostlist {whole!r}: host names cannot contain spaces")
        return [item]
    prefix, ranges, rest = match.groups()
    tails = _expand_item(rest, whole) if rest else [""]
    return [f"{prefix}{number}{tail}" for number in _numbers(ranges, whole) for tail in tails]


def _numbers(ranges: str, whole: str) -> list[str]:
    """``01-03,7`` -> ``["01", "02", "03", "7"]``: the lower bound's width sets the zero padding."""
    numbers = []
    for part in ranges.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise HostlistError(f"hostlist {whole!r}: {part!r} is not N or N-M (write e.g. gpu[01-08])")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise HostlistError(f"hostlist {whole!r}: range {part!r} runs backwards")
        width = len(low) if low.startswith("0") else 0
        numbers += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return numbers
