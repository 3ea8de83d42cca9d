"""Replay arrivals through the shared policy, one task at a time, no departures.

The cluster lives in the policy's own :class:`ClusterState`, as in a placement cycle: it groups
what scores alike and chooses exactly as the daemon does. Nothing here scores or chooses by itself.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..policy.apply import place_on
from ..policy.cluster import ClusterState
from ..policy.fragmentation import Fragmentation
from ..policy.model import PolicyConfig, Request
from ..policy.placement import build_context, uses_random_ties
from ..policy.rules import Ask
from ..policy.select import rng_for
from ..policy.view import group_nodes
from .protocol import Arrivals, gpu_request
from .trace import Cluster


@dataclass
class Trajectory:
    """Per arrival: what had arrived, what was allocated, and the cluster's fragmentation."""

    capacity: int
    arrived: list[int] = field(default_factory=list)  # cumulative GPU units requested
    allocated: list[int] = field(default_factory=list)  # GPU units in use after the arrival
    fragmented: list[float] = field(default_factory=list)  # sum of F_n, in GPUs
    failed: list[Request] = field(default_factory=list)


class Replay:
    """The cluster's state during one replay, under one policy."""

    def __init__(self, cluster: Cluster, node_order: Sequence[int], config: PolicyConfig,
                 workload: Sequence[tuple[Request, float]], metric: Fragmentation | None = None):
        views = group_nodes(cluster.gpus, cluster.nodes)
        views = [views[i] for i in node_order]
        self.config = config
        self.ctx = build_context(views, config, workload)
        self.state = ClusterState(views, self.ctx)
        self.metric = metric or self.ctx.fragmentation
        self.frag = [self.metric.of(v) for v in views]
        self.capacity = cluster.capacity

    def place(self, req: Request) -> bool:
        ask = Ask(req, self.config, self.ctx.reference_speed)
        rng = rng_for(self.config.seed, req.job_id) if uses_random_ties(self.config) else None
        found = self.state.choose(ask, rng)
        if found is None:
            return False
        rank, positions = found
        view = place_on(self.state.views[rank], positions, ask)
        self.state.update(rank, view)
        self.frag[rank] = self.metric.of(view)
        return True


def run(cluster: Cluster, arrivals: Arrivals, config: PolicyConfig,
        workload: Sequence[tuple[Request, float]], metric: Fragmentation | None = None,
        progress: Callable[[int], None] | None = None) -> Trajectory:
    """Replay every arrival; a task that does not fit anywhere is dropped for good."""
    replay = Replay(cluster, arrivals.node_order, config, workload, metric)
    traj = Trajectory(capacity=replay.capacity)
    arrived = allocated = 0
    for i, req in enumerate(arrivals.pods):
        arrived += gpu_request(req)
        if replay.place(req):
            allocated += gpu_request(req)
        else:
            traj.failed.append(req)
        traj.arrived.append(arrived)
        traj.allocated.append(allocated)
        traj.fragmented.append(sum(replay.frag))
        if progress is not None:
            progress(i + 1)
    return traj
