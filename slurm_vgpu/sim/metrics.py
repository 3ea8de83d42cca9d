"""The figures the FGD paper reports, computed from a replay's trajectory.

Allocation is plotted against the arrived GPU request as a percentage of capacity, averaged within
integer-% buckets (an empty bucket borrows its neighbours, as the authors' analysis does); the
headline is the bucket at the arrival maximum (130%).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..policy.model import Request
from .protocol import gpu_request
from .replay import Trajectory


@dataclass
class Figures:
    """Every figure of one policy on one seed."""

    policy: str
    seed: int
    allocation: float  # % of GPU capacity allocated, in the bucket at the arrival maximum
    curve: dict[int, float]  # arrived % bucket -> mean allocation %
    fragmentation_rate: float  # % of idle GPU capacity that is fragmented, at the end
    unallocated_gpus: float  # idle GPU capacity at the end, in GPUs
    arrived: dict[str, int] = field(default_factory=dict)  # per SLO class
    failed: dict[str, int] = field(default_factory=dict)  # per SLO class
    failed_gpus: float = 0.0  # GPU request of the tasks that failed, in GPUs
    failed_cpu_only: int = 0  # tasks without a GPU that failed (counted in ``failed`` too)
    seconds: float = 0.0


def allocation_curve(traj: Trajectory, up_to: int) -> dict[int, float]:
    arrived = np.round(np.asarray(traj.arrived, dtype=float) * 100 / traj.capacity)
    allocated = np.asarray(traj.allocated, dtype=float) * 100 / traj.capacity
    curve = {}
    for bucket in range(up_to + 1):
        values = allocated[arrived == bucket]
        if not len(values):
            values = allocated[(arrived >= bucket - 1) & (arrived <= bucket + 1)]
        if len(values):
            curve[bucket] = round(float(values.mean()), 4)
    return curve


def figures(policy: str, seed: int, traj: Trajectory, pods: Sequence[Request],
            arrival_max: float, gpu_count: int, seconds: float = 0.0) -> Figures:
    top = int(round(arrival_max * 100))
    curve = allocation_curve(traj, top)
    idle_units = traj.capacity - traj.allocated[-1] if traj.allocated else traj.capacity
    idle_gpus = idle_units * gpu_count / traj.capacity
    frag = traj.fragmented[-1] if traj.fragmented else 0.0
    return Figures(
        policy=policy,
        seed=seed,
        allocation=curve[top] if top in curve else (curve[max(curve)] if curve else 0.0),
        curve=curve,
        fragmentation_rate=round(100 * frag / idle_gpus, 4) if idle_gpus else 0.0,
        unallocated_gpus=round(idle_gpus, 2),
        arrived=dict(Counter(p.slo_class.value for p in pods)),
        failed=dict(Counter(p.slo_class.value for p in traj.failed)),
        failed_gpus=round(sum(map(gpu_request, traj.failed)) * gpu_count / traj.capacity, 2),
        failed_cpu_only=sum(1 for p in traj.failed if not p.share),
        seconds=round(seconds, 2),
    )


def summary(runs: Sequence[Figures]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over seeds, per policy (in the order first seen)."""
    out: dict[str, dict[str, float]] = {}
    for policy in dict.fromkeys(r.policy for r in runs):
        mine = [r for r in runs if r.policy == policy]
        alloc = np.array([r.allocation for r in mine])
        out[policy] = {
            "seeds": len(mine),
            "allocation_mean": round(float(alloc.mean()), 4),
            "allocation_sd": round(float(alloc.std(ddof=1)) if len(mine) > 1 else 0.0, 4),
            "unallocated_gpus_mean": round(float(np.mean([r.unallocated_gpus for r in mine])), 2),
            "fragmentation_rate_mean": round(float(np.mean([r.fragmentation_rate for r in mine])), 4),
            "failed_mean": round(float(np.mean([sum(r.failed.values()) for r in mine])), 1),
            "failed_gpus_mean": round(float(np.mean([r.failed_gpus for r in mine])), 2),
            "seconds": round(float(sum(r.seconds for r in mine)), 2),
        }
    return out
