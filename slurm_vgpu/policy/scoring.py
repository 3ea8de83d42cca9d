"""Scoring policies: how good a node is for a request, and which of its GPUs to take.

A policy scores each *candidate* (the GPUs a request would take on a node) with three keys, all
compared higher-is-better: ``primary`` and ``rest`` come before node order, ``after`` only breaks
ties between candidates of the same node. A node's score is its best candidate's
``primary + rest``; :mod:`.select` picks the node, breaking ties at random (the random policy) or
to the first node in order (the others). Keys read only the node's :attr:`.view.NodeView.key`,
whether it is in use, and the candidate's GPUs, so :mod:`.cluster` can score every equal
(node, GPU) pair once; ``primary`` reads of the request only its share, GPU count and CPU, and
``rest`` reads of a one-GPU candidate's node only whether it is in use, so that it is computed
once per GPU state and node use rather than once per class.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .fragmentation import Fragmentation, key_after
from .model import GpuState, PolicyConfig, Request, SloClass
from .prices import slice_cost
from .rules import Ask, fitting_positions, node_room
from .stranding import stranding_growth, waste_growth
from .view import NodeView


@dataclass
class Context:
    """What scoring needs beyond one node: the config, the cluster's scale and the typical requests."""

    config: PolicyConfig
    fragmentation: Fragmentation
    reference_speed: float = 1.0
    cpu_scale: float = 1.0  # the largest node's CPU, to normalise best-fit's leftover
    gpu_scale: float = 1.0  # the largest node's GPU capacity, likewise


@dataclass(frozen=True, slots=True)
class NodeChoice:
    score: tuple  # compared lexicographically, higher wins
    options: tuple[tuple[int, ...], ...]  # GPU positions on the node, the policy's pick first


KeyFn = Callable[[NodeView, tuple[int, ...], Ask, Context], tuple]


def _none(node: NodeView, positions: tuple[int, ...], ask: Ask, ctx: Context) -> tuple:
    return ()


@dataclass(frozen=True)
class Policy:
    primary: KeyFn = _none
    rest: KeyFn = _none
    after: KeyFn = _none
    every_option: bool = False  # the random policy: every candidate is an option, drawn at random


def _first_whole(fit: Sequence[int], ask: Ask) -> tuple[int, ...]:
    return tuple(fit[: ask.request.gpus])


def _is_slice(ask: Ask, gpu: GpuState) -> bool:
    return not ask.whole_gpus and ask.units(gpu) < gpu.capacity


def candidates(node: NodeView, ask: Ask, fit: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A slice may take any fitting GPU; whole-GPU tasks take the first free ones by index."""
    if ask.request.gpus == 1 and fit and _is_slice(ask, node.gpus[fit[0]]):
        return [(i,) for i in fit]
    return [_first_whole(fit, ask)]


def _leftover(node: NodeView, ask: Ask, ctx: Context) -> float:
    """Best-fit's weighted leftover: 0.5 CPU + 0.5 GPU after placing, normalised by the largest node."""
    req = ask.request
    gpu_left = node.gpu_free - req.share * req.gpus
    cpu_left = 0 if node.cpu_milli_free is None else node.cpu_milli_free - req.cpu_milli
    return 0.5 * cpu_left / ctx.cpu_scale + 0.5 * gpu_left / ctx.gpu_scale


def _best_fit_score(node: NodeView, positions: tuple[int, ...], ask: Ask, ctx: Context) -> tuple:
    """Least weighted leftover, as an integer 0..100 (the FGD paper's best-fit baseline)."""
    return (int((1.0 - _leftover(node, ask, ctx)) * 100),)


def _room_left(node: NodeView, positions: tuple[int, ...], ask: Ask, ctx: Context) -> tuple:
    """The GPU left with least room (slices only; whole GPUs leave none)."""
    if len(positions) != 1:
        return ()
    gpu = node.gpus[positions[0]]
    return (-(gpu.free - ask.units(gpu)),)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _fgd_score(node: NodeView, positions: tuple[int, ...], ask: Ask, ctx: Context) -> tuple:
    """The FGD plugin's node score: ``int(sigmoid(F_before - F_after) * 100)``, F in GPUs."""
    frag = ctx.fragmentation
    return (int(_sigmoid(frag.of(node) - frag.of_key(key_after(node, positions, ask))) * 100),)


def _class_fit(gpu: GpuState, ask: Ask) -> tuple:
    """Soft SLO preferences: latency slices want few co-tenants, then the fastest GPU (its speed:
    the site's GpuSpeed or the datasheet's); best-effort fills GPUs already in use and keeps off
    latency slices' GPUs; throughput just packs."""
    cls = ask.request.slo_class
    if cls is SloClass.LATENCY:
        return (-len(gpu.classes), gpu.speed)
    if cls is SloClass.BEST_EFFORT:
        return (SloClass.LATENCY not in gpu.classes, gpu.used > 0)
    return (0, 0)


def _ours_score(node: NodeView, positions: tuple[int, ...], ask: Ask, ctx: Context) -> tuple:
    """For a slice, first what it costs its GPU's room against the tightest packing of the
    typical shares (:func:`.prices.slice_cost`); then FGD's score over fragmentation plus CPU
    stranding (:mod:`.stranding`): the same truncated sigmoid of how much ``F_n + S_n`` grows, so
    that where CPU cannot strand a GPU (nodes that do not report CPU, or CPU to spare) the second
    key is exactly FGD's score. Whole GPUs cost no room, so for them only the second key counts."""
    frag = ctx.fragmentation
    after = key_after(node, positions, ask)
    growth = frag.of(node) - frag.of_key(after) + stranding_growth(node.key, after, frag)
    cost = 0.0
    if len(positions) == 1 and _is_slice(ask, node.gpus[positions[0]]):
        cost = slice_cost(node, positions[0], ask, frag)
    return (cost, int(_sigmoid(growth) * 100))


def _ours_rest(node: NodeView, positions: tuple[int, ...], ask: Ask, ctx: Context) -> tuple:
    """What the score leaves to node order: a node already in use over an empty one (empty nodes
    stay whole for multi-GPU and CPU-heavy tasks), the slice whose GPU room is expected to waste
    least (:func:`.stranding.waste_growth`), the SLO class's preference, and the GPU left with
    least room. Class preferences come after packing because ahead of it they cost 0.2-0.4 points
    of allocation (docs/simulator.md)."""
    in_use = node.in_use
    if len(positions) != 1:
        return (in_use, 0.0, 0, False, 0)
    gpu = node.gpus[positions[0]]
    waste = round(waste_growth(node, positions[0], ask, ctx.fragmentation), 9)
    return (in_use, waste, *_class_fit(gpu, ask), -(gpu.free - ask.units(gpu)))


SCORERS: dict[str, Policy] = {
    "random": Policy(every_option=True),  # every node and (for a slice) every GPU alike
    "first-fit": Policy(),  # what Slurm's own count would do: the first GPU with room, first node
    "best-fit": Policy(primary=_best_fit_score, after=_room_left),
    "fgd": Policy(primary=_fgd_score),  # first GPU by index on ties
    "ours": Policy(primary=_ours_score, rest=_ours_rest),  # a slice's packing cost, then FGD + CPU stranding
}

RANDOM_TIES = frozenset({"random"})  # the others take the first best node in node order, as the
# FGD paper's scheduler did: its runs reproduce only with that tie-break (see docs/simulator.md)


def policy_of(config: PolicyConfig) -> Policy:
    try:
        return SCORERS[config.policy]
    except KeyError:
        raise ValueError(f"unknown policy {config.policy!r}; choose one of "
                         f"{', '.join(SCORERS)}") from None


def evaluate(node: NodeView, ask: Ask, ctx: Context) -> NodeChoice | None:
    """Score one node for one request under ``ctx.config.policy``; None when it cannot host it."""
    req = ask.request
    if req.nodes is not None and node.name not in req.nodes:
        return None
    if req.gpus == 0:
        if not node_room(node, req):
            return None
        fit: tuple[int, ...] = ()
    else:
        fit = fitting_positions(node, ask)
        if not fit:
            return None
    policy = policy_of(ctx.config)
    options = candidates(node, ask, fit)
    if policy.every_option:
        return NodeChoice((0,), tuple(options))
    best = None
    for positions in options:
        key = policy.primary(node, positions, ask, ctx) + policy.rest(node, positions, ask, ctx)
        full = (key, policy.after(node, positions, ask, ctx))
        if best is None or full > best[0]:
            best = (full, positions)
    return NodeChoice(best[0][0], (best[1],))


def request_shape(req: Request) -> tuple:
    """Everything :func:`evaluate` reads of a request (not its id or wait)."""
    return (req.share, req.user, req.slo_class, req.memory_mib, req.models, req.gpus,
            req.cpu_milli, req.node_memory_mib, req.nodes)
