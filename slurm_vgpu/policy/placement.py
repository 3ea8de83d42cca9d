"""Placement cycles: :class:`Placer` decides requests in order against the GPUs as earlier decisions
left them, and keeps its grouped view of the cluster from one cycle to the next.

Grouping 8,000 GPUs and measuring each node's fragmentation costs far more than deciding a batch of
requests, so the daemon keeps one :class:`Placer` and hands it each cycle's inventory: only the
nodes that changed are regrouped. :func:`place_slices` is one cycle of a fresh placer; a kept
placer decides exactly as it would (``tests/unit/test_placer.py``).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from .apply import place_on
from .cluster import ClusterState
from .fragmentation import Fragmentation, typical_requests
from .model import (
    Blocked,
    Decision,
    GpuState,
    NodeState,
    PlacementResult,
    PolicyConfig,
    Request,
)
from .rules import Ask, Verdict, could_wait_for, explain
from .scoring import RANDOM_TIES, Context, request_shape
from .select import rng_for
from .units import reference_speed
from .view import NodeView, group_nodes


def build_context(nodes: Sequence[NodeView], config: PolicyConfig,
                  workload: Iterable[tuple[Request, float]]) -> Context:
    """Scoring context for a cluster: scales from its largest node, typical requests from the workload."""
    ref, cpu_scale, gpu_scale = _scales(nodes, config)
    return Context(
        config=config,
        fragmentation=Fragmentation(typical_requests(workload), config, ref),
        reference_speed=ref,
        cpu_scale=cpu_scale,
        gpu_scale=gpu_scale,
    )


def _scales(nodes: Sequence[NodeView], config: PolicyConfig) -> tuple[float, float, float]:
    """What the context reads of the cluster: the reference speed, the most free CPU of a node and
    the largest node's GPU capacity."""
    return (
        reference_speed([g for n in nodes for g in n.gpus], config),
        float(max((n.cpu_milli_free or 0 for n in nodes), default=0) or 1),
        float(max((sum(g.capacity for g in n.gpus) for n in nodes), default=0) or 1),
    )


def uses_random_ties(config: PolicyConfig) -> bool:
    return config.policy in RANDOM_TIES


class Placer:
    """The policy with its view of the cluster kept between cycles.

    ``workload`` gives the typical requests (with weights) that FGD and ours measure fragmentation
    against; it is fixed for the placer's life, which is what lets node measures be reused (the
    daemon builds a new placer when it refreshes the workload).
    """

    def __init__(self, gpus: Sequence[GpuState], config: PolicyConfig, nodes: Sequence[NodeState] = (),
                 workload: Sequence[tuple[Request, float]] = ()):
        self.config = config
        self.typical = typical_requests(workload)
        self._build(group_nodes(gpus, nodes))

    def _build(self, views: list[NodeView]) -> None:
        ref, cpu_scale, gpu_scale = _scales(views, self.config)
        fragmentation = Fragmentation(self.typical, self.config, ref)
        self.state = ClusterState(views, Context(self.config, fragmentation, ref, cpu_scale, gpu_scale))

    def sync(self, gpus: Sequence[GpuState], nodes: Sequence[NodeState] = ()) -> int:
        """Take the inventory as it is now (every GPU, and node resources where known); returns how
        many nodes changed. A new or vanished node, or a change of the cluster's scales, regroups
        everything, since node order and scales enter every score."""
        by_node: dict[str, list[GpuState]] = {}
        for gpu in gpus:
            by_node.setdefault(gpu.node, []).append(gpu)
        resources = {n.name: n for n in nodes}
        names = [*by_node, *(n for n in resources if n not in by_node)]  # group_nodes' order
        views = self.state.views
        if names != [v.name for v in views]:
            self._build(group_nodes(gpus, nodes))
            return len(names)
        changed = []
        for rank, view in enumerate(views):
            res = resources.get(view.name)
            now = (tuple(sorted(by_node.get(view.name, ()), key=lambda g: g.index)),
                   res.cpu_milli_free if res else None, res.memory_mib_free if res else None)
            if now != (view.gpus, view.cpu_milli_free, view.memory_mib_free):
                changed.append((rank, NodeView(view.name, *now)))
        after = list(views)
        for rank, view in changed:
            after[rank] = view
        ctx = self.state.ctx
        # the scales too may have moved with no node changed since: the placer's own decisions
        # (CPU taken on the node of most free CPU) move them, and a fresh placer reads them anew
        if _scales(after, self.config) != (ctx.reference_speed, ctx.cpu_scale, ctx.gpu_scale):
            self._build(after)
        else:
            for rank, view in changed:
                self.state.update(rank, view)
        return len(changed)

    def prepare(self) -> None:
        """Score the cluster for every typical request shape ahead of the first cycle."""
        self.state.prepare([Ask(Request("typical", t.share, gpus=t.gpus, cpu_milli=t.cpu_milli), self.config,
                                self.state.ctx.reference_speed) for t in self.typical])

    def place(self, requests: Sequence[Request]) -> PlacementResult:
        """Decide each request in order; the placer's view then includes the decisions.

        A request that has waited longer than ``config.starvation_wait_s`` and waits only for room
        reserves the GPU with most room among those it could use, which later requests of the same
        call then leave alone (reservations last one call).
        """
        reserved: dict[str, str] = {}
        outcomes = list(self.decide(requests, reserved))
        return PlacementResult(tuple(o for o in outcomes if isinstance(o, Decision)),
                               tuple(o for o in outcomes if isinstance(o, Blocked)), reserved)

    def decide(self, requests: Sequence[Request], reserved: dict[str, str] | None = None
               ) -> Iterator[Decision | Blocked]:
        """:meth:`place`, one outcome at a time, so that the daemon can commit the first decisions of a
        backlog while it decides the rest. Reservations (filled into ``reserved``) and the holds
        behind them last until the iteration ends or is closed; those already in ``reserved`` (an
        earlier call's, carried) hold from the start."""
        state, config = self.state, self.config
        reserved = {} if reserved is None else reserved
        if reserved:
            node_of = {g.uuid: v.name for v in state.views for g in v.gpus}
            for uuid in reserved:
                state.hold(node_of[uuid])
        # A request like one that found no room earlier in the call finds none either: the cluster
        # only filled since, and reservations only grew. It waits for the same reason; one that
        # starves reserves from the same verdict, asked again only if something was placed since.
        failed: dict[tuple, tuple[Verdict, int]] = {}  # request shape -> (verdict, decisions before it)
        placed = 0
        by_room = _ByRoom(state)
        try:
            for req in requests:
                shape = request_shape(req)
                starving = req.waited_s > config.starvation_wait_s
                earlier = failed.get(shape)
                if earlier is None:
                    ask = Ask(req, config, state.ctx.reference_speed, dict(reserved))
                    found = state.choose(ask, rng_for(config.seed, req.job_id) if uses_random_ties(config) else None)
                    if found is not None:
                        rank, positions = found
                        node = state.views[rank]
                        state.update(rank, place_on(node, positions, ask))
                        placed += 1
                        yield Decision(
                            job_id=req.job_id,
                            node=node.name,
                            gpu_uuids=tuple(node.gpus[i].uuid for i in positions),
                            share=ask.units(node.gpus[positions[0]]) if positions else 0,
                        )
                        continue
                    # only now is every GPU looked at, to say why
                    earlier = failed[shape] = (explain(state.views, ask), placed)
                elif starving and earlier[1] != placed:  # it reserves among the GPUs as they are now
                    ask = Ask(req, config, state.ctx.reference_speed, dict(reserved))
                    earlier = failed[shape] = (explain(state.views, ask), placed)
                if starving and earlier[0].waits_for_room and req.gpus == 1:
                    _reserve(Ask(req, config, state.ctx.reference_speed), reserved, state, by_room.now(placed))
                yield replace(earlier[0].blocked, job_id=req.job_id)
        finally:
            state.release_holds()


def place_slices(
    gpus: Sequence[GpuState],
    requests: Sequence[Request],
    config: PolicyConfig,
    nodes: Sequence[NodeState] = (),
    workload: Sequence[tuple[Request, float]] = (),
) -> PlacementResult:
    """One cycle of a fresh :class:`Placer`; without ``workload`` the pending requests stand in
    for the typical ones."""
    return Placer(gpus, config, nodes, workload or [(r, 1.0) for r in requests]).place(requests)


class _ByRoom:
    """The cluster's GPUs, most room first (free units, then free memory, then cluster order),
    sorted again only once a decision has changed some."""

    def __init__(self, state: ClusterState):
        self.state = state
        self.placed = -1
        self.gpus: list[GpuState] = []

    def now(self, placed: int) -> list[GpuState]:
        if placed != self.placed:
            self.gpus = sorted((g for v in self.state.views for g in v.gpus),
                               key=lambda g: (-g.free, -(g.memory_mib - g.memory_used_mib)))
            self.placed = placed
        return self.gpus


def _reserve(ask: Ask, reserved: dict[str, str], state: ClusterState, by_room: list[GpuState]) -> None:
    """Hold, for a starving request, the GPU with most room among those it could wait for."""
    for gpu in by_room:
        if gpu.uuid not in reserved and could_wait_for(gpu, ask):
            reserved[gpu.uuid] = ask.request.job_id
            state.hold(gpu.node)
            return
