"""The figures of a replay in time: how long each class waited, how full the GPUs were, what ran."""
from __future__ import annotations

import bisect

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..policy.model import SloClass
from .timeline import Timeline
from .trace import MILLI, TimedPod

GPU_HOUR = 3600 * MILLI  # GPU units (milli-GPUs) x seconds in one GPU hour

SERIES_POINTS = 500  # allocation samples kept for plots and --json
ON_TIME_S = 30  # a latency task whose wait is at most this met its start-time target (bench/slo)


@dataclass
class TimeFigures:
    """One scheduler on one seed."""

    policy: str
    seed: int
    started: int
    withdrawn: int  # deleted by their owner while they waited
    refused: int  # no GPU of the cluster could ever host them
    stuck: int  # still waiting when nothing else could happen
    wait_mean_s: dict[str, float] = field(default_factory=dict)  # per SLO class, of started tasks
    wait_p99_s: dict[str, float] = field(default_factory=dict)
    demand_mean: float = 0.0  # % of GPU capacity the tasks would hold were each started on arrival
    demand_peak: float = 0.0
    allocation_mean: float = 0.0  # % of GPU capacity in use, time-weighted over the arrival span
    allocation_peak: float = 0.0
    series: list[tuple[int, float]] = field(default_factory=list)  # (s from the first arrival, allocation %), arrival span
    seconds: float = 0.0
    latency_on_time: float = 0.0  # % of the latency tasks started within ON_TIME_S of their arrival
    preempted: int = 0  # best-effort runs taken off for a latency task
    work_lost_gpu_h: float = 0.0  # GPU hours those runs had done
    work_done_gpu_h: dict[str, float] = field(default_factory=dict)  # per class, runs ended by the last arrival


def _allocation(timeline: Timeline, first: int, last: int) -> float:
    """Time-weighted mean of the allocation between the first and the last arrival, in %."""
    times = np.asarray(timeline.times, dtype=float)
    alloc = np.asarray(timeline.allocated, dtype=float)
    keep = times <= last
    times, alloc = times[keep], alloc[keep]
    if last <= first or not len(times):
        return 100 * float(alloc.max(initial=0)) / timeline.capacity
    spans = np.diff(np.append(times, last))
    return round(100 * float((alloc * spans).sum()) / (last - first) / timeline.capacity, 4)


def _series(timeline: Timeline, first: int, last: int) -> list[tuple[int, float]]:
    """The allocation over the arrival span (after it, the longest tasks drain alone)."""
    upto = bisect.bisect_right(timeline.times, last)
    step = max(1, upto // SERIES_POINTS)
    return [(t - first, round(100 * a / timeline.capacity, 3))
            for t, a in zip(timeline.times[:upto:step], timeline.allocated[:upto:step])]


def time_figures(policy: str, seed: int, timeline: Timeline, pods: Sequence[TimedPod],
                 demand: tuple[float, float] = (0.0, 0.0), seconds: float = 0.0) -> TimeFigures:
    first, last = pods[0].created, pods[-1].created
    waits: dict[str, list[int]] = {c.value: [] for c in SloClass}
    latency = [p for p in pods if p.request.slo_class is SloClass.LATENCY]
    on_time = sum(1 for p in latency if timeline.waits.get(p.request.job_id, ON_TIME_S + 1) <= ON_TIME_S)
    for pod in pods:
        wait = timeline.waits.get(pod.request.job_id)
        if wait is not None:
            waits[pod.request.slo_class.value].append(wait)
    return TimeFigures(
        policy=policy,
        seed=seed,
        started=len(timeline.waits),
        withdrawn=len(timeline.withdrawn),
        refused=len(timeline.refused),
        stuck=len(timeline.stuck),
        wait_mean_s={c: round(float(np.mean(w)), 1) for c, w in waits.items() if w},
        wait_p99_s={c: round(float(np.percentile(w, 99)), 1) for c, w in waits.items() if w},
        demand_mean=round(100 * demand[0], 2),
        demand_peak=round(100 * demand[1], 2),
        allocation_mean=_allocation(timeline, first, last),
        allocation_peak=round(100 * max(timeline.allocated, default=0) / timeline.capacity, 4),
        series=_series(timeline, first, last),
        seconds=round(seconds, 2),
        latency_on_time=round(100 * on_time / len(latency), 2) if latency else 100.0,
        preempted=timeline.preempted,
        work_lost_gpu_h=round(timeline.work_lost / GPU_HOUR, 3),
        work_done_gpu_h={c: round(w / GPU_HOUR, 3) for c, w in timeline.work_done.items()},
    )
