"""What Slurm alone would do with the same tasks: the baseline of the time mode.

Slurm counts a shared GPU in units (gres/shard) and knows nothing of SLO classes or
fragmentation: its select plugin takes the first node in its order with room, the first GPUs there
with room. Its main scheduler starts jobs in priority order until one does not fit; the backfill
scheduler then starts later jobs that do not delay that one. Modelled here as EASY backfill with
exact run times (the traced ones, as if every job's time limit were exact, which is Slurm's best
case): the first job that does not fit gets a reservation at the earliest time and node where it
would fit, and a later job may start now only where it leaves that reservation whole. Slurm's
backfill reserves for more than one job (``bf_max_job_test``) and runs every ``bf_interval``; both
would start fewer jobs early, not more.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..policy.model import PolicyConfig
from ..policy.rules import Ask, fitting_positions, node_room
from ..policy.scoring import request_shape
from ..policy.view import NodeView
from .timeline import Occupancy, Outcome, Start, end_of
from .trace import TimedPod

# first-fit over GPU units, with no co-tenant cap: a shard has no class
SLURM_CONFIG = PolicyConfig(policy="first-fit", latency_max_cotenants=10**9)


def _hosts(view: NodeView, ask: Ask) -> bool:
    if ask.request.gpus == 0:
        return node_room(view, ask.request)
    return bool(fitting_positions(view, ask))


def _closed(view: NodeView) -> NodeView:
    """The node with nothing to give: how a reservation's node looks to a job that would break it."""
    return NodeView(view.name, tuple(replace(g, available=False) for g in view.gpus), 0, 0)


class SlurmScheduler:
    def __init__(self, occupancy: Occupancy):
        self.occupancy = occupancy
        # (job id, time, node rank, ask) of the first job that does not fit: it holds while that
        # job waits, since jobs end when planned and later starts leave it whole
        self.reservation: tuple[str, int, int, Ask] | None = None

    def shadow(self, ask: Ask) -> tuple[int, int] | None:
        """(time, node rank) at which the first blocked job would fit as running jobs end; None if it
        fits nowhere even on an empty cluster."""
        occ = self.occupancy
        running = sorted((end, rank, job_id) for rank, tasks in enumerate(occ.on_node)
                         for job_id, (_, _, end) in tasks.items())
        gone: dict[int, set[str]] = {}
        for end, rank, job_id in running:
            gone.setdefault(rank, set()).add(job_id)
            left = ((r, p) for j, (r, p, _) in occ.on_node[rank].items() if j not in gone[rank])
            if _hosts(occ.view_of(rank, left), ask):
                return end, rank
        return None

    def spares(self, start: Start, end: int) -> bool:
        """Whether a job started now leaves the reserved job room at its time and node."""
        if self.reservation is None:
            return True
        _, at, rank, ask = self.reservation
        if start.rank != rank or end <= at:
            return True
        occ = self.occupancy
        still = [(r, p) for r, p, e in occ.on_node[rank].values() if e > at]
        return _hosts(occ.view_of(rank, still + [(start.pod.request, start.positions)]), ask)

    def decide(self, tasks: Sequence[TimedPod], now: int, whole: bool) -> Outcome:
        occ, out = self.occupancy, Outcome()
        if whole:
            head = self.reservation
            self.reservation = None
        failed: set[tuple] = set()  # request shapes that found no room: the cluster only fills
        for pod in tasks:
            shape = request_shape(pod.request)
            if shape in failed and self.reservation is not None:
                continue
            ask = occ.ask(pod.request)
            found = occ.state.choose(ask, None)
            if found is None:
                failed.add(shape)
                if self.reservation is None:
                    if whole and head is not None and head[0] == pod.request.job_id and now < head[1]:
                        self.reservation = head
                    elif (at := self.shadow(ask)) is not None:
                        self.reservation = (pod.request.job_id, *at, ask)
                    else:
                        out.refused.append(pod)
                continue
            start, end = Start(pod, *found), end_of(pod, now)
            if not self.spares(start, end):
                start = self._elsewhere(pod, ask, self.reservation[2])
                if start is None:
                    continue
            occ.put(start, end, now)
            out.started.append(start)
        return out

    def _elsewhere(self, pod: TimedPod, ask: Ask, rank: int) -> Start | None:
        """The first fit with the reserved node out of reach."""
        state = self.occupancy.state
        view = state.views[rank]
        state.update(rank, _closed(view))
        try:
            found = state.choose(ask, None)
        finally:
            state.update(rank, view)
        return None if found is None else Start(pod, *found)
