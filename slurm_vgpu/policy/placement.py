"""``place_slices``: one placement cycle, requests decided one at a time in priority order."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

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
from .rules import Ask, Verdict, explain
from .scoring import RANDOM_TIES, Context
from .select import rng_for
from .units import reference_speed
from .view import NodeView, group_nodes


def build_context(nodes: Sequence[NodeView], config: PolicyConfig,
                  workload: Iterable[tuple[Request, float]]) -> Context:
    """Scoring context for a cluster: scales from its largest node, typical requests from the workload."""
    gpus = [g for n in nodes for g in n.gpus]
    ref = reference_speed(gpus, config)
    return Context(
        config=config,
        fragmentation=Fragmentation(typical_requests(workload), config, ref),
        reference_speed=ref,
        cpu_scale=float(max((n.cpu_milli_free or 0 for n in nodes), default=0) or 1),
        gpu_scale=float(max((sum(g.capacity for g in n.gpus) for n in nodes), default=0) or 1),
    )


def uses_random_ties(config: PolicyConfig) -> bool:
    return config.policy in RANDOM_TIES


def place_slices(
    gpus: Sequence[GpuState],
    requests: Sequence[Request],
    config: PolicyConfig,
    nodes: Sequence[NodeState] = (),
    workload: Sequence[tuple[Request, float]] = (),
) -> PlacementResult:
    """Decide each request in order against the GPUs as earlier decisions left them.

    ``workload`` gives the typical requests (with weights) that FGD and ours measure fragmentation
    against; without it the pending requests themselves stand in. A request that has waited longer
    than ``config.starvation_wait_s`` and waits only for room reserves the GPU with most room among
    those it could use, which later requests of the cycle then leave alone.
    """
    views = group_nodes(gpus, nodes)
    ctx = build_context(views, config, workload or [(r, 1.0) for r in requests])
    state = ClusterState(views, ctx)
    reserved: dict[str, str] = {}
    decisions: list[Decision] = []
    blocked: list[Blocked] = []
    for req in requests:
        ask = Ask(req, config, ctx.reference_speed, dict(reserved))
        found = state.choose(ask, rng_for(config.seed, req.job_id) if uses_random_ties(config) else None)
        if found is None:  # only now is every GPU looked at, to say why
            verdict = explain(state.views, ask)
            blocked.append(verdict.blocked)
            if req.waited_s > config.starvation_wait_s:
                _reserve(verdict, req, reserved, state)
            continue
        rank, positions = found
        node = state.views[rank]
        state.update(rank, place_on(node, positions, ask))
        decisions.append(Decision(
            job_id=req.job_id,
            node=node.name,
            gpu_uuids=tuple(node.gpus[i].uuid for i in positions),
            share=ask.units(node.gpus[positions[0]]) if positions else 0,
        ))
    return PlacementResult(tuple(decisions), tuple(blocked), reserved)


def _reserve(verdict: Verdict, req: Request, reserved: dict[str, str], state: ClusterState) -> None:
    """Hold, for a starving request, the GPU with most room among those it waits for."""
    free = [g for g in verdict.waiting_for if g.uuid not in reserved]
    if req.gpus == 1 and free:
        gpu = max(free, key=lambda g: (g.free, g.memory_mib - g.memory_used_mib))
        reserved[gpu.uuid] = req.job_id
        state.hold(gpu.node)
