"""Hard rules: which GPUs and nodes a request may use, and why it waits when none is left.

Each rule is written once and used twice: the fast path keeps the GPUs that pass them all, and
:func:`explain` applies them one after the other so that the first rule that leaves nothing names
the reason a user reads. Rules marked ``never`` look at what a GPU *is*, not at what it holds, so a
request they reject would wait forever.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .model import Blocked, GpuState, PolicyConfig, Request, SloClass
from .units import units_at
from .view import NodeView

GIB = 1024


@dataclass(frozen=True)
class Ask:
    """A request resolved against the cycle: what every rule needs, computed once."""

    request: Request
    config: PolicyConfig
    reference_speed: float = 1.0
    reserved: Mapping[str, str] = field(default_factory=dict)  # gpu uuid -> job that holds it
    models: frozenset[str] = field(init=False, repr=False, compare=False)  # the request's, lower-case
    rules: tuple[GpuRule, ...] = field(init=False, repr=False, compare=False)
    plain_units: int | None = field(init=False, repr=False, compare=False)  # its units on any GPU (None: per GPU)

    @property
    def whole_gpus(self) -> bool:
        """Multi-GPU trace tasks and whole-GPU jobs take whole GPUs."""
        return self.request.gpus > 1 or self.request.whole

    def __post_init__(self) -> None:
        # In plain units a slice takes its share on any GPU: worked out once, asked very often.
        plain = not self.config.reference_model and not self.whole_gpus
        object.__setattr__(self, "plain_units", self.request.share if plain else None)
        object.__setattr__(self, "models", frozenset(m.lower() for m in self.request.models))
        # the rules that can fail this request (the others pass every GPU), asked GPU after GPU
        object.__setattr__(self, "rules", tuple(r for r in (*GPU_RULES, RESERVED_RULE)
                                                if r.asked is None or r.asked(self)))

    def units(self, gpu: GpuState) -> int:
        if self.plain_units is not None:
            return self.plain_units
        return self.units_at(gpu.capacity, gpu.speed)

    def units_at(self, capacity: int, speed: float) -> int:
        """:meth:`units` on a GPU of this capacity and speed."""
        if self.plain_units is not None:
            return self.plain_units
        if self.whole_gpus:
            return capacity
        return units_at(self.request.share, speed, self.config, self.reference_speed)


def _label(ask: Ask) -> str:
    return "|".join(sorted(ask.request.models)) + " " if ask.request.models else ""


def _whole_free(gpus: int) -> str:
    return f"{gpus} whole free GPUs" if gpus > 1 else "a whole GPU that carries no slice"


def _pct(units: int, gpu: GpuState) -> str:
    return f"{units * 100 / gpu.capacity:g}%"


def _gib(mib: int) -> str:
    return f"{mib / GIB:g} GiB"


def _unavailable(gpus: Sequence[GpuState], most: int = 3) -> str:
    """Why, as the inventory says it (a silent node's agent, a drain reason); the first few."""
    reasons = list(dict.fromkeys(g.unavailable_reason for g in gpus if g.unavailable_reason))
    more = f"; and {len(reasons) - most} more" if len(reasons) > most else ""
    return f" ({'; '.join(reasons[:most])}{more})" if reasons else ""


def _clients(gpus: Sequence[GpuState]) -> str:
    """The client limits of these GPUs, as one number or a range."""
    limits = sorted({g.max_clients for g in gpus if g.max_clients is not None})
    return f"{limits[0]}" if len(limits) == 1 else f"{limits[0]} to {limits[-1]}"


@dataclass(frozen=True)
class GpuRule:
    name: str
    passes: Callable[[GpuState, Ask], bool]
    reason: Callable[[Ask, Sequence[GpuState]], str]  # given the GPUs that were left before it
    never: bool = False
    capacity: bool = False  # waits for room only: an old request may reserve a GPU it fails
    per_user: bool = False  # the verdict depends on who asks, not only on what is asked for
    asked: Callable[[Ask], bool] | None = None  # whether it can fail this request at all (None: always)


def _latency_room(gpu: GpuState, ask: Ask) -> bool:
    """A GPU hosting a latency slice holds at most ``latency_max_cotenants`` others."""
    hosts_latency = ask.request.slo_class is SloClass.LATENCY or SloClass.LATENCY in gpu.classes
    return not hosts_latency or len(gpu.classes) <= ask.config.latency_max_cotenants


GPU_RULES: tuple[GpuRule, ...] = (
    GpuRule(
        "model",
        lambda g, a: not a.models or g.model.lower() in a.models,
        lambda a, left: f"no GPU of model {'|'.join(sorted(a.request.models))} in the cluster",
        never=True,
        asked=lambda a: bool(a.models),
    ),
    GpuRule(
        "node",
        lambda g, a: a.request.nodes is None or g.node in a.request.nodes,
        lambda a, left: ("Slurm refused its pin on every node with a fitting GPU" if not a.request.nodes else
                         f"no fitting GPU on the nodes it may still use ({', '.join(sorted(a.request.nodes))})"),
        asked=lambda a: a.request.nodes is not None,
    ),
    GpuRule(
        "memory-size",
        lambda g, a: a.request.memory_mib is None or a.request.memory_mib <= g.memory_mib,
        lambda a, left: (f"memory {_gib(a.request.memory_mib)} exceeds every {_label(a)}GPU "
                         f"(largest: {_gib(max(g.memory_mib for g in left))})"),
        never=True,
        asked=lambda a: a.request.memory_mib is not None,
    ),
    GpuRule(
        "share-size",
        lambda g, a: 0 < a.units(g) <= g.capacity,
        lambda a, left: (f"share {a.request.share} is not 1..capacity of any {_label(a)}GPU"
                         if a.request.share <= 0 else
                         f"needs {_pct(min(a.units(g) for g in left), left[0])} of one GPU after "
                         f"conversion from {a.config.reference_model} units; a slice never spans GPUs"),
        never=True,
    ),
    GpuRule(
        "available",
        lambda g, a: g.available,
        lambda a, left: f"every {_label(a)}GPU is drained or down{_unavailable(left)}",
    ),
    GpuRule(
        "share-free",
        lambda g, a: a.units(g) <= g.free,
        lambda a, left: (
            f"needs {_pct(min(a.units(g) for g in left), left[0])} of one GPU; the most free on any "
            f"eligible GPU is {_pct(max(g.free for g in left), left[0])}"
            if not a.whole_gpus else f"needs {_whole_free(a.request.gpus)}; no eligible GPU is free"),
        capacity=True,
    ),
    GpuRule(
        "memory-free",
        lambda g, a: a.request.memory_mib is None
        or a.request.memory_mib <= g.memory_mib - g.memory_used_mib,
        lambda a, left: (f"needs {_gib(a.request.memory_mib)} of GPU memory; the most free on any "
                         f"eligible GPU with room is "
                         f"{_gib(max(g.memory_mib - g.memory_used_mib for g in left))}"),
        capacity=True,
        asked=lambda a: a.request.memory_mib is not None,
    ),
    GpuRule(
        "clients",
        lambda g, a: g.client_room,
        lambda a, left: f"every eligible GPU with room already holds {_clients(left)} slices, the most its MPS "
                        "server takes",
        capacity=True,
    ),
    GpuRule(
        "user",
        lambda g, a: a.config.multi_user or g.user is None or g.user == a.request.user,
        lambda a, left: f"every {_label(a)}GPU with room runs another user's MPS server",
        per_user=True,
        asked=lambda a: not a.config.multi_user,
    ),
    GpuRule(
        "memory-cap",
        lambda g, a: g.caps_kept(a.request.user, a.request.memory_mib),
        lambda a, left: (
            "has no GPU memory cap, so it may use all of a GPU's memory, and every eligible GPU with room "
            "holds another user's capped slices; give it a cap (--vgpu-mem=SIZE) to share one"
            if a.request.memory_mib is None else
            "every eligible GPU with room holds another user's slice without a memory cap, which may use "
            "all of the GPU's memory"),
        capacity=True,
        per_user=True,
    ),
    GpuRule(
        "latency",
        _latency_room,
        lambda a, left: (f"every {_label(a)}GPU with room already holds more than "
                         f"{a.config.latency_max_cotenants} slices beside a latency slice"),
    ),
)

SHARE_SIZE = next(r for r in GPU_RULES if r.name == "share-size")

RESERVED_RULE = GpuRule(
    "reserved",
    lambda g, a: a.reserved.get(g.uuid, a.request.job_id) == a.request.job_id,
    lambda a, left: (f"every fitting GPU is reserved for job {a.reserved[left[0].uuid]}, "
                     f"which has waited longest"),
    asked=lambda a: bool(a.reserved),
)


SHAPE_RULES = tuple(r for r in GPU_RULES if not r.per_user)  # their verdict holds for any user's request
USER_RULES = tuple(r for r in GPU_RULES if r.per_user)


def gpu_passes(gpu: GpuState, ask: Ask) -> bool:
    # share-free first: on a filling cluster most GPUs fail it, and it is the cheapest to ask
    if ask.units(gpu) > gpu.free:
        return False
    for rule in ask.rules:  # a loop, not all(...): asked millions of times in a replay
        if not rule.passes(gpu, ask):
            return False
    return True


def node_room(node: NodeView, request: Request) -> bool:
    """The node has the CPU and memory the task asks for (unknown resources never block)."""
    return ((node.cpu_milli_free is None or request.cpu_milli <= node.cpu_milli_free)
            and (node.memory_mib_free is None or request.node_memory_mib <= node.memory_mib_free))


def fitting_positions(node: NodeView, ask: Ask) -> tuple[int, ...]:
    """Positions (in ``node.gpus``) of the GPUs this request may use; ``()`` when the node cannot host it."""
    if not node_room(node, ask.request):
        return ()
    if ask.request.gpus == 0:
        return ()
    if ask.plain_units is not None and ask.plain_units > node.most_free:
        return ()  # no GPU has room for it: the rules need not be asked GPU by GPU
    fit = tuple(i for i, g in enumerate(node.gpus) if gpu_passes(g, ask))
    return fit if len(fit) >= ask.request.gpus else ()


@dataclass(frozen=True)
class Verdict:
    """Why a request waits: the rule that left nothing; ``waits_for_room``: room freed on a GPU
    could end the wait (a starving request may then reserve one)."""

    blocked: Blocked
    rule: str
    waits_for_room: bool = False


def could_wait_for(gpu: GpuState, ask: Ask) -> bool:
    """The GPU passes every rule but those of room and reservations: the request could have it once
    room frees there."""
    return all(r.passes(gpu, ask) for r in ask.rules if not r.capacity and r is not RESERVED_RULE)


def explain(nodes: Sequence[NodeView], ask: Ask) -> Verdict:
    """Apply the rules in order over the whole cluster; the first that leaves nothing is the reason."""
    req = ask.request

    def verdict(rule: str, text: str, never: bool = False, room: bool = False) -> Verdict:
        return Verdict(Blocked(req.job_id, text, never), rule, room)

    if req.gpus == 0:
        return verdict("node", _node_reason(list(nodes), req))
    gpus = [g for n in nodes for g in n.gpus]
    if not gpus:
        return verdict("model", "no GPU in the cluster", never=True)
    left = gpus
    for rule in (r for r in GPU_RULES if r in ask.rules):  # the others pass every GPU
        kept = [g for g in left if rule.passes(g, ask)]
        if not kept:
            return verdict(rule.name, rule.reason(ask, left), rule.never, room=not rule.never)
        if rule is SHARE_SIZE and req.gpus > 1:
            most = _most_per_node(kept)
            if most < req.gpus:
                return verdict("gpu-count", f"needs {req.gpus} GPUs of one node; the largest "
                               f"eligible node has {most}", never=True)
        left = kept
    if _most_per_node(left) < req.gpus:
        return verdict("gpu-count", f"needs {req.gpus} whole free GPUs on one node; the most on any "
                       f"eligible node is {_most_per_node(left)}", room=True)
    passing = {g.uuid for g in left}
    hosts = [n for n in nodes if sum(g.uuid in passing for g in n.gpus) >= req.gpus]
    roomy = [n for n in hosts if node_room(n, req)]
    if not roomy:
        return verdict("node", _node_reason(hosts, req), room=True)
    return verdict("reserved", RESERVED_RULE.reason(
        ask, [g for n in roomy for g in n.gpus if g.uuid in passing]))


def _most_per_node(gpus: Sequence[GpuState]) -> int:
    counts: dict[str, int] = {}
    for g in gpus:
        counts[g.node] = counts.get(g.node, 0) + 1
    return max(counts.values(), default=0)


def _node_reason(nodes: Sequence[NodeView], req: Request) -> str:
    cpus = [n.cpu_milli_free for n in nodes if n.cpu_milli_free is not None]
    if cpus and req.cpu_milli > max(cpus):
        return (f"needs {req.cpu_milli / 1000:g} CPUs on a node with a fitting GPU; the most free is "
                f"{max(cpus) / 1000:g}")
    mems = [n.memory_mib_free for n in nodes if n.memory_mib_free is not None]
    if mems and req.node_memory_mib > max(mems):
        return (f"needs {_gib(req.node_memory_mib)} of node memory beside a fitting GPU; the most free "
                f"is {_gib(max(mems))}")
    return (f"no node with a fitting GPU has both {req.cpu_milli / 1000:g} CPUs and "
            f"{_gib(req.node_memory_mib)} of memory free")
