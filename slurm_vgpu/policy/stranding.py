"""Two measures "ours" adds to FGD's fragmentation (docs/simulator.md, "How ours works").

*CPU stranding.* FGD's ``F_n`` asks, for one typical request at a time, whether it could run on the
node; it does not see that the node's free CPU may feed only a few more of them. A node whose idle
GPUs would need more CPU than it has left (at the typical requests' CPU per GPU unit) strands the
part it cannot feed:

    S_n = idle GPUs * max(0, CPU needed - CPU free) / CPU needed,  CPU needed = idle units * k

with ``k`` = sum p_m * cpu_m / sum p_m * gpus_m * share_m over the typical requests (CPU-only
requests included: they take the same CPU). ``S_n`` is in GPUs, like ``F_n``, and reads only the
node's :attr:`.view.NodeView.key`; a node that does not report its CPU strands nothing.

*Expected waste of a GPU's room.* ``W(r)``: what a GPU with ``r`` units free is expected to waste
if the next typical request either fits it (and leaves ``r - share``) or, when it does not fit,
leaves the room wasted: ``W(r) = (1 - q(r)) * r + sum_{s <= r} p_s * W(r - s)``, ``q(r)`` the
probability that a typical one-GPU request fits ``r``. It looks further than ``F_n`` (a 530 room
that a 470 leaves at 60 is worse than one that 320 + 160 could fill), and is used only to break
ties.
"""
from __future__ import annotations

import bisect
import weakref

from .fragmentation import Fragmentation, Key
from .rules import Ask
from .view import NodeView

_cpu_per_unit: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_waste: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_stranded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # frag -> key -> S_n


def cpu_per_unit(frag: Fragmentation) -> float:
    """``k``: the typical requests' CPU per GPU unit they ask for (0 when they ask no GPU)."""
    k = _cpu_per_unit.get(frag)
    if k is None:
        units = sum(m.p * m.gpus * m.share for m in frag.typical)
        cpu = sum(m.p * m.cpu_milli for m in frag.typical)
        k = _cpu_per_unit[frag] = cpu / units if units > 0 else 0.0
    return k


def stranded(key: Key, k: float) -> float:
    """``S_n`` of a node with this key, in GPUs."""
    cpu, entries = key
    if cpu is None or k <= 0:
        return 0.0
    idle_units = sum(free for free, _, _, _ in entries)
    if idle_units <= 0:
        return 0.0
    needed = idle_units * k
    if needed <= cpu:
        return 0.0
    return sum(free / capacity for free, capacity, _, _ in entries) * (needed - cpu) / needed


def stranding_growth(before: Key, after: Key, frag: Fragmentation) -> float:
    """``S_n`` of a node with key ``before`` minus ``S_n`` once a placement leaves it ``after``
    (negative when it strands more)."""
    if before[0] is None:  # a node that does not report its CPU strands nothing
        return 0.0
    k = cpu_per_unit(frag)
    if k <= 0:
        return 0.0
    memo = _stranded.get(frag)
    if memo is None:
        memo = _stranded[frag] = {}
    before_s = memo.get(before)
    if before_s is None:
        before_s = memo[before] = stranded(before, k)
    after_s = memo.get(after)
    if after_s is None:
        after_s = memo[after] = stranded(after, k)
    return before_s - after_s


def waste_table(frag: Fragmentation, capacity: int, speed: float) -> list[float]:
    """``W(r)`` for r = 0..capacity on a GPU of this capacity and speed."""
    per_gpu = _waste.get(frag)
    if per_gpu is None:  # setdefault would build a dict on every call of a hot path
        per_gpu = _waste[frag] = {}
    table = per_gpu.get((capacity, speed))
    if table is not None:
        return table
    shares = frag.slices(capacity, speed)
    total = sum(m.p for m in frag.typical) or 1.0
    ranked = sorted(shares.items())
    table = [0.0] * (capacity + 1)
    for r in range(1, capacity + 1):
        fits = ranked[:bisect.bisect_right(ranked, (r, float("inf")))]
        q = sum(p for _, p in fits)
        table[r] = (1.0 - q / total) * r + sum(p * table[r - s] for s, p in fits) / total
    per_gpu[(capacity, speed)] = table
    return table


def waste_growth(node: NodeView, position: int, ask: Ask, frag: Fragmentation) -> float:
    """``W`` of the GPU's room before minus after a slice takes it (higher is better)."""
    g = node.gpus[position]
    table = waste_table(frag, g.capacity, g.speed)
    left = max(0, min(g.capacity, g.free - ask.units(g)))
    return table[max(0, min(g.capacity, g.free))] - table[left]
