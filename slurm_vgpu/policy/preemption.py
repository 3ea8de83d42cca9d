"""Which best-effort slices a latency slice may requeue to run now (Herald: inference protected
over co-located work), and on which GPU.

A latency request that waits for room may take a GPU whose best-effort slices, once gone, leave
room it passes every rule on (share, memory, MPS clients, users, memory caps, latency co-tenants),
with best-effort slices of the node's other GPUs gone too where the node lacks its CPUs or memory:
never a latency or throughput slice, never a job Slurm would not requeue, never more slices than it
needs. Of every GPU and set of victims that free such room, the one with the least work lost wins:
the SM-seconds the victims have run (share x seconds), which a job that does not checkpoint loses;
then the fewest victims, then the fastest GPU. The set is minimal: a victim of the GPU that could
be spared would make a cheaper or equal set with fewer victims, and one of another GPU is spared
again once the rest free enough.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations

from .model import GpuState, NodeState, PolicyConfig, Request, SloClass
from .rules import Ask, gpu_passes

# the cheapest best-effort slices of a GPU looked at for one request: 2^N sets are tried
MOST_CANDIDATES = 10
MOST_PER_CYCLE = 4  # waiting latency requests that may start a preemption in one cycle


@dataclass(frozen=True)
class Tenant:
    """A slice running on a GPU, as preemption weighs it."""

    job_id: str
    share: int
    user: int
    slo_class: SloClass
    memory_mib: int | None = None
    run_s: float = 0.0  # seconds it has run
    requeueable: bool = True  # Slurm would requeue it (not submitted with --no-requeue)
    cpu_milli: int = 0
    node_memory_mib: int = 0

    @property
    def work(self) -> float:
        """What requeueing it loses: its share times the seconds it has run."""
        return self.share * self.run_s

    @property
    def victim(self) -> bool:
        return self.slo_class is SloClass.BEST_EFFORT and self.requeueable


@dataclass(frozen=True)
class Preemption:
    """Requeue ``victims`` (job ids) from ``gpu_uuid`` so that ``job_id`` fits there."""

    job_id: str
    gpu_uuid: str
    node: str
    share: int  # the latency job's units on that GPU
    victims: tuple[str, ...]
    work_lost: float


def without(gpu: GpuState, tenants: Sequence[Tenant], gone: Sequence[Tenant]) -> GpuState:
    """The GPU as it is once ``gone`` (some of its ``tenants``) have left it."""
    left = [t for t in tenants if t not in gone]
    return replace(
        gpu,
        used=gpu.used - sum(t.share for t in gone),
        memory_used_mib=gpu.memory_used_mib - sum(t.memory_mib or 0 for t in gone),
        user=left[0].user if left and gpu.user is not None else None,
        classes=tuple(t.slo_class for t in left),
        capped_users=frozenset(t.user for t in left if t.memory_mib is not None),
        uncapped_users=frozenset(t.user for t in left if t.memory_mib is None),
    )


def _node_room(node: NodeState | None, request: Request, gone: Sequence[Tenant]) -> bool:
    """The node has the request's CPUs and memory once ``gone`` have left (unknown: no limit)."""
    if node is None:
        return True
    return ((node.cpu_milli_free is None
             or request.cpu_milli <= node.cpu_milli_free + sum(t.cpu_milli for t in gone))
            and (node.memory_mib_free is None
                 or request.node_memory_mib <= node.memory_mib_free + sum(t.node_memory_mib for t in gone)))


def _elsewhere_on_node(node: NodeState | None, request: Request, gone: Sequence[Tenant],
                       extras: Sequence[Tenant]) -> tuple[Tenant, ...] | None:
    """The best-effort slices of the node's other GPUs that must go too, for the CPUs and memory they
    hold, once ``gone`` have left: the cheapest first, then each that could be spared spared
    again; None when even all of them leave too little."""
    if _node_room(node, request, gone):
        return ()
    taken: list[Tenant] = []
    for extra in extras:
        taken.append(extra)
        if _node_room(node, request, [*gone, *taken]):
            break
    else:
        return None
    for extra in sorted(taken, key=lambda t: -t.work):
        rest = [t for t in taken if t is not extra]
        if _node_room(node, request, [*gone, *rest]):
            taken = rest
    return tuple(taken)


def choose_victims(request: Request, gpus: Sequence[GpuState], tenants: Mapping[str, Sequence[Tenant]],
                   config: PolicyConfig, reference_speed: float = 1.0,
                   nodes: Mapping[str, NodeState] | None = None) -> Preemption | None:
    """The GPU and the best-effort slices to requeue so that ``request``, a latency slice, runs there
    now; None when no such set exists (or the request is not a latency slice). ``tenants``: each
    GPU's running slices, by GPU uuid; ``nodes``: each node's idle CPUs and memory. The victims are
    slices of that GPU, and, where the node lacks the CPUs or memory the request asks for, slices
    of its other GPUs too."""
    if request.slo_class is not SloClass.LATENCY or request.whole or request.gpus != 1:
        return None
    ask = Ask(request, config, reference_speed)
    on_node: dict[str, dict[str, Tenant]] = {}  # node -> its victims by job id
    for gpu in gpus:
        for t in tenants.get(gpu.uuid, ()):
            if t.victim:
                on_node.setdefault(gpu.node, {})[t.job_id] = t
    best: tuple[tuple, Preemption] | None = None
    for gpu in gpus:
        if gpu.node not in on_node:
            continue  # no victim on its node
        on = tenants.get(gpu.uuid, ())
        candidates = sorted((t for t in on if t.victim), key=lambda t: t.work)[:MOST_CANDIDATES]
        here = {t.job_id for t in on}
        extras = sorted((t for t in on_node.get(gpu.node, {}).values() if t.job_id not in here), key=lambda t: t.work)
        node = (nodes or {}).get(gpu.node)
        if not gpu_passes(without(gpu, on, candidates), ask) or _elsewhere_on_node(node, request, candidates,
                                                                                    extras) is None:
            continue  # not even all of them gone would make room
        for size in range(len(candidates) + 1):
            for gone in combinations(candidates, size):
                if best is not None and sum(t.work for t in gone) > best[0][0]:
                    continue
                if not gpu_passes(without(gpu, on, gone), ask):
                    continue
                victims = (*gone, *(_elsewhere_on_node(node, request, gone, extras) or ()))
                key = (sum(t.work for t in victims), len(victims), sum(t.share for t in victims), -gpu.speed,
                       gpu.node, gpu.index)
                if victims and _node_room(node, request, victims) and (best is None or key < best[0]):
                    best = key, Preemption(request.job_id, gpu.uuid, gpu.node, ask.units(gpu),
                                           tuple(t.job_id for t in victims), key[0])
    return best[1] if best else None
