"""The FGD paper's replay protocol (see sim/traces/alibaba-gpu-v2023/FGD-PROTOCOL.md).

Shuffle the tasks with the seed, append tasks drawn with replacement until the GPU request reaches
``arrival_max`` times the cluster's capacity (stopping, like the authors' code, when the running total
plus the next task's *per-GPU* request would pass the target), and put the nodes in a random order.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..policy.model import Request


@dataclass(frozen=True)
class Arrivals:
    pods: tuple[Request, ...]  # in arrival order
    original: int  # how many come from the trace itself (the rest are the inflation's copies)
    node_order: tuple[int, ...]  # node indices, in the order the scheduler sees them


def gpu_request(req: Request) -> int:
    """Total GPU units a task asks for."""
    return req.share * req.gpus


def tune(pods: Sequence[Request], capacity: int, ratio: float, rng: random.Random) -> list[Request]:
    """Tasks to append (or, above the target, the trace with random tasks removed) so that the total
    GPU request meets ``ratio * capacity``, with the authors' stopping quirk."""
    target = ratio * capacity
    total = sum(gpu_request(p) for p in pods)
    pods = list(pods)
    if total > target:
        while total > target and pods:
            total -= gpu_request(pods.pop(rng.randrange(len(pods))))
        return pods
    extra = []
    while pods:
        pod = pods[rng.randrange(len(pods))]
        if total + pod.share > target:  # the quirk: per-GPU share, not the total request
            break
        total += gpu_request(pod)
        extra.append(replace(pod, job_id=f"{pod.job_id}-tuned-{len(extra)}"))
    return pods + extra


def arrivals(pods: Sequence[Request], capacity: int, node_count: int, seed: int,
             arrival_max: float) -> Arrivals:
    rng = random.Random(seed)
    order = sorted(pods, key=lambda p: p.job_id)
    rng.shuffle(order)
    tuned = tune(order, capacity, arrival_max, rng)
    nodes = list(range(node_count))
    rng.shuffle(nodes)
    return Arrivals(tuple(tuned), min(len(order), len(tuned)), tuple(nodes))


def assign_users(pods: Sequence[Request], users: int, skew: float, seed: int) -> tuple[Request, ...]:
    """Give each task one of ``users`` synthetic Unix users, Zipf-distributed with exponent ``skew``;
    0 users leaves them all to one user (no MPS ownership constraint)."""
    if users <= 0:
        return tuple(pods)
    rng = random.Random(f"users/{seed}")
    weights = [1.0 / (k ** skew) for k in range(1, users + 1)]
    uids = rng.choices(range(1000, 1000 + users), weights=weights, k=len(pods))
    return tuple(replace(p, user=u) for p, u in zip(pods, uids))
