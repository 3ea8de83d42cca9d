"""Run the protocol for several policies and seeds: the simulator's entry point below the CLI."""
from __future__ import annotations

import random
import time
from dataclasses import replace
from collections.abc import Callable, Mapping, Sequence

from ..policy.fragmentation import Fragmentation, typical_requests
from ..policy.model import PolicyConfig, Request
from .metrics import Figures, figures
from .protocol import arrivals, assign_users
from .replay import run
from .slurm_baseline import SLURM_CONFIG, SlurmScheduler
from .time_figures import TimeFigures, time_figures
from .timeline import DaemonScheduler, Occupancy, offered_demand, replay
from .trace import Cluster, TimedPod

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


SLURM = "slurm"  # the time mode's baseline: Slurm's own scheduling, first-fit in priority order


def part_of(cluster: Cluster, fraction: float, seed: int) -> Cluster:
    """A random ``fraction`` of the nodes (at least one), in their order, with their GPUs."""
    if fraction >= 1:
        return cluster
    rng = random.Random(f"nodes/{seed}")
    keep = sorted(rng.sample(range(len(cluster.nodes)), max(1, round(fraction * len(cluster.nodes)))))
    names = {cluster.nodes[i].name for i in keep}
    return Cluster(tuple(g for g in cluster.gpus if g.node in names), tuple(cluster.nodes[i] for i in keep))


def simulate_in_time(cluster: Cluster, pods: Sequence[TimedPod], policies: Sequence[str],
                     seeds: Sequence[int], users: int = 0, user_skew: float = 1.0,
                     cluster_fraction: float = 1.0, class_priority: Mapping[str, int] | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     preempt_grace: int | None = None) -> list[TimeFigures]:
    """Replay the tasks at their times under Slurm alone and under each policy's daemon path (its
    queue weighed by ``class_priority``, as ``ClassPriority``, and preempting best-effort tasks for
    latency ones with ``preempt_grace``, as ``PreemptBestEffort`` and ``PreemptGraceTime``; Slurm's
    in creation order, never preempting); each seed shuffles the node order, as in the packing
    protocol, and picks the nodes kept."""
    workload = [(p.request, 1.0) for p in pods]
    total = (len(policies) + 1) * len(seeds) * 2 * len(pods)
    out = []
    for seed in seeds:
        part = part_of(cluster, cluster_fraction, seed)
        demand = offered_demand(pods, part.capacity)
        requests = assign_users([p.request for p in pods], users, user_skew, seed)
        mine = [replace(p, request=r) for p, r in zip(pods, requests)]
        order = list(range(len(part.nodes)))
        random.Random(seed).shuffle(order)
        for policy in (SLURM, *policies):
            start = time.perf_counter()
            done = [0]

            def tick(n: int, done=done) -> None:
                if progress is not None and (n - done[0] >= 200 or n == 2 * len(pods)):
                    progress(n - done[0], total)
                    done[0] = n

            if policy == SLURM:
                scheduler = SlurmScheduler(Occupancy(part, order, SLURM_CONFIG, workload))
            else:
                config = PolicyConfig(policy=policy, seed=seed)
                scheduler = DaemonScheduler(Occupancy(part, order, config, workload), preempt_grace)
            timeline = replay(mine, scheduler, tick, None if policy == SLURM else class_priority)
            out.append(time_figures(policy, seed, timeline, mine, demand, time.perf_counter() - start))
    return out
