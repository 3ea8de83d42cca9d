"""When a waiting job's reason is written to its AdminComment again.

Each write is an update RPC to slurmctld. Under a burst the reasons of all waiting jobs change in
their figures nearly every cycle ("the most free on any eligible GPU is 40%", then 30%, ...), and
rewriting them all was most of the placement's job updates (bench/burst). A reason that says
something new (its words change) is written at once; one whose figures alone changed, at most every
``every`` seconds per job.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

REWRITE_FIGURES_EVERY = 60.0  # seconds

_FIGURES = re.compile(r"\d+(?:\.\d+)?")


def gist(reason: str) -> str:
    """A reason with its figures taken out: what changes in it when the cluster's numbers move."""
    return _FIGURES.sub("#", reason)


class WaitNotes:
    """The daemon's memory of when it last wrote each waiting job's reason (kept across cycles)."""

    def __init__(self, every: float = REWRITE_FIGURES_EVERY):
        self.every = every
        self._written: dict[int, float] = {}

    def due(self, job_id: int, shown: str | None, reason: str, now_s: float) -> bool:
        """Whether ``reason`` replaces ``shown`` (the reason the job's AdminComment holds) now."""
        if shown == reason:
            return False
        if shown is None or gist(shown) != gist(reason):
            return True
        last = self._written.get(job_id)
        return last is None or now_s - last >= self.every

    def written(self, job_id: int, now_s: float) -> None:
        self._written[job_id] = now_s

    def keep_only(self, job_ids: Iterable[int]) -> None:
        """Forget the jobs that no longer wait here (ended, placed, gone from Slurm)."""
        alive = set(job_ids)
        self._written = {j: t for j, t in self._written.items() if j in alive}
