"""Run the protocol for several policies and seeds: the simulator's entry point below the CLI."""
from __future__ import annotations

import time
from dataclasses import replace
from collections.abc import Callable, Sequence

from ..policy.fragmentation import Fragmentation, typical_requests
from ..policy.model import PolicyConfig, Request
from .metrics import Figures, figures
from .protocol import arrivals, assign_users
from .replay import run
from .trace import Cluster

DEFAULT_SEED = 42


def seeds_for(count: int) -> list[int]:
    """``count`` seeds from 42 on, as the FGD paper numbers its runs."""
    return list(range(DEFAULT_SEED, DEFAULT_SEED + count))


def simulate(cluster: Cluster, pods: Sequence[Request], policies: Sequence[str], seeds: Sequence[int],
             users: int = 0, user_skew: float = 1.0, arrival_max: float = 1.3,
             progress: Callable[[int, int], None] | None = None) -> list[Figures]:
    """Replay the trace under each policy and seed; ``progress(advance, total)`` hears about every
    hundred tasks replayed."""
    workload = [(p, 1.0) for p in pods]  # typical requests come from the trace itself
    metric = Fragmentation(typical_requests(workload), PolicyConfig())
    per_seed = []
    for seed in seeds:
        arr = arrivals(pods, cluster.capacity, len(cluster.nodes), seed, arrival_max)
        per_seed.append((seed, replace(arr, pods=assign_users(arr.pods, users, user_skew, seed))))
    total = len(policies) * sum(len(arr.pods) for _, arr in per_seed)
    out = []
    for seed, arr in per_seed:
        for policy in policies:
            start = time.perf_counter()
            done = [0]

            def tick(n: int, arr=arr, done=done) -> None:
                if progress is not None and (n - done[0] >= 100 or n == len(arr.pods)):
                    progress(n - done[0], total)
                    done[0] = n

            traj = run(cluster, arr, PolicyConfig(policy=policy, seed=seed), workload, metric, tick)
            out.append(figures(policy, seed, traj, arr.pods, arrival_max, len(cluster.gpus),
                               time.perf_counter() - start))
    return out
