"""Slurm's advance reservations as the placement must weigh them (docs/slurm-behaviour.md,
"Reservations"): a pin Slurm cannot honour waits out PinTimeout holding a GPU no job uses, so a job
is placed only on nodes its reservations allow it now.

- A job of a reservation (``--reservation=R``) runs only on R's nodes while R is active (unless R
  has ``FLEX``), and waits while R has not started.
- A job of no reservation runs on no node of an active reservation, nor on a node of one that
  starts before the job's time limit would end it (Slurm: ``ReqNodeNotAvail, May be reserved for
  other job``; an unlimited job never fits before a reservation to come).

A reservation of some cores only (``CoreCnt=``) counts here as its whole nodes, and a ``MAGNETIC``
one as one for its named jobs only: both leave GPUs idle that Slurm could give, never the reverse.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .. import hostlist

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # how scontrol prints times, in slurmctld's local time


@dataclass(frozen=True)
class Reservation:
    name: str
    nodes: frozenset[str]
    start_s: float
    end_s: float
    flags: frozenset[str] = frozenset()

    def active(self, now_s: float) -> bool:
        return self.start_s <= now_s < self.end_s


def parse(text: str) -> list[Reservation]:
    """``scontrol show reservation --oneliner``: one reservation per line of ``Key=Value`` fields
    (``No reservations in the system`` when there are none)."""
    found = []
    for line in text.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if "ReservationName" not in fields:
            continue
        nodes = fields.get("Nodes", "")
        found.append(Reservation(
            name=fields["ReservationName"],
            nodes=frozenset(hostlist.expand(nodes)) if nodes and nodes != "(null)" else frozenset(),
            start_s=_time(fields.get("StartTime", ""), -math.inf),
            end_s=_time(fields.get("EndTime", ""), math.inf),
            flags=frozenset(f for f in fields.get("Flags", "").split(",") if f and f != "(null)"),
        ))
    return found


def _time(text: str, unknown: float) -> float:
    try:
        return time.mktime(time.strptime(text, TIME_FORMAT))
    except ValueError:
        return unknown


def names(resv_name: str) -> frozenset[str]:
    """The reservations a job asked for (``--reservation=a,b``; Slurm runs it in one of them)."""
    return frozenset(filter(None, resv_name.split(",")))


def not_started(own: frozenset[str], reservations: Sequence[Reservation], now_s: float) -> str | None:
    """Why Slurm keeps a job of the reservations ``own`` pending whatever its GPU: none of them is
    active (not started yet, or no longer known). None when one is, or the job asks for none."""
    if not own:
        return None
    known = {r.name: r for r in reservations if r.name in own}
    if any(r.active(now_s) for r in known.values()):
        return None
    ahead = sorted((r.start_s, r.name) for r in known.values() if r.start_s > now_s)
    if ahead:
        start, name = ahead[0]
        return f"its reservation {name} starts at {time.strftime(TIME_FORMAT, time.localtime(start))}"
    return f"its reservation {','.join(sorted(own))} is not active in Slurm (ended or deleted)"


def closed_nodes(own: frozenset[str], time_limit_min: int | None, reservations: Iterable[Reservation],
                 now_s: float) -> frozenset[str]:
    """The nodes a job of the reservations ``own`` and this time limit (None: unlimited) may not
    start on now: those of every other reservation that is active or starts before the job would
    end."""
    ends = math.inf if time_limit_min is None else now_s + 60 * time_limit_min
    return frozenset(node for r in reservations if r.name not in own and r.end_s > now_s and r.start_s < ends
                     for node in r.nodes)


def confined_to(own: frozenset[str], reservations: Iterable[Reservation], now_s: float) -> frozenset[str] | None:
    """The nodes a job of the reservations ``own`` is kept to: those of its active ones, unless one
    lets it run outside (``FLEX``). None: any node."""
    mine = [r for r in reservations if r.name in own and r.active(now_s)]
    if not own or any("FLEX" in r.flags for r in mine):
        return None
    return frozenset(node for r in mine for node in r.nodes)
