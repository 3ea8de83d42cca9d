"""What a one-GPU share is worth, in GPUs, when the typical shares are packed as tightly as they can
be; and so what a slice costs the GPU room it takes (docs/simulator.md, "How ours works").

Why: FGD's measure looks one typical request ahead, so it cannot tell a 320 share that joins a 650
(the GPU left 30 short) from one that joins a 470 (210 left, which little but another 160 fills).
The configuration LP (Gilmore and Gomory) packs the typical one-GPU shares, in their proportions,
onto as few GPUs as fractional bin packing allows; its dual prices each share size by the GPUs it
takes in that packing: an 810 share that nothing common can join costs a whole GPU, two 470s share
one, so each costs a half. A room of ``r`` units is worth ``V(r)``, the most that shares fitting
it are worth; a slice of price ``v`` that takes ``s`` of a room ``r`` costs

    v + V(r - s) - V(r)   (at most 0)

which is 0 when the slice and what can still fill its room are as good as the tightest packing, and
below it by the GPUs the choice gives up. Solved once per typical set and GPU kind, by column
generation over a small revised simplex, so that the placement daemon needs no LP library.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping

from .fragmentation import Fragmentation
from .rules import Ask
from .view import NodeView

_TOLERANCE = 1e-9
_MAX_PIVOTS = 2000  # far more than any typical set has needed; past it the sizes price themselves
_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # frag -> (capacity, speed) -> table


def room_values(sizes: list[int], weights: list[float], capacity: int) -> tuple[list[float], list[int]]:
    """The most weight a room of 0..capacity units holds (any number of each size: an exact
    unbounded knapsack), and per room the index of the last size taken (-1: none)."""
    best = [0.0] * (capacity + 1)
    last = [-1] * (capacity + 1)
    for room in range(1, capacity + 1):
        best[room], last[room] = best[room - 1], -1
        for i, size in enumerate(sizes):
            if size <= room and best[room - size] + weights[i] > best[room] + _TOLERANCE:
                best[room], last[room] = best[room - size] + weights[i], i
    return best, last


def heaviest_gpu(sizes: list[int], weights: list[float], capacity: int) -> tuple[float, list[int]]:
    """The most weight one GPU can hold, and how many of each size make it up."""
    best, last = room_values(sizes, weights, capacity)
    counts = [0] * len(sizes)
    room = capacity
    while room > 0:
        if last[room] < 0:
            room -= 1
        else:
            counts[last[room]] += 1
            room -= sizes[last[room]]
    return best[capacity], counts


def share_prices(counts: Mapping[int, float], capacity: int) -> dict[int, float]:
    """Share size -> its price in GPUs: the dual of packing ``counts`` (size -> how many, in any
    proportion) onto as few GPUs of ``capacity`` units as fractional bin packing allows. Sizes
    of 0 or of a whole GPU and more are not slices and get no price."""
    sizes = sorted(s for s, n in counts.items() if 0 < s < capacity and n > 0)
    m = len(sizes)
    if m == 0:
        return {}
    # The basis starts as one column per size, a GPU full of that size alone: feasible at once.
    inverse = [[1.0 / (capacity // s) if j == i else 0.0 for j in range(m)] for i, s in enumerate(sizes)]
    x = [counts[s] / (capacity // s) for s in sizes]
    for _ in range(_MAX_PIVOTS):
        prices = [sum(row[i] for row in inverse) for i in range(m)]  # 1^T B^-1: every GPU costs 1
        worth, column = heaviest_gpu(sizes, prices, capacity)
        if worth <= 1.0 + 1e-7:
            return dict(zip(sizes, prices))
        step = [sum(row[k] * column[k] for k in range(m)) for row in inverse]  # B^-1 a
        rows = [(x[r] / step[r], r) for r in range(m) if step[r] > _TOLERANCE]
        if not rows:
            break
        theta, out = min(rows)
        x = [xr - theta * dr for xr, dr in zip(x, step)]
        x[out] = theta
        pivot = [v / step[out] for v in inverse[out]]
        inverse = [pivot if r == out else [v - step[r] * p for v, p in zip(inverse[r], pivot)]
                   for r in range(m)]
    return {s: s / capacity for s in sizes}


def price_table(frag: Fragmentation, capacity: int, speed: float) -> tuple[list[float], dict[int, float]]:
    """``V(r)`` for r = 0..capacity, and the share prices, on a GPU of this capacity and speed."""
    per_gpu = _tables.get(frag)
    if per_gpu is None:  # setdefault would build a dict on every call of a hot path
        per_gpu = _tables[frag] = {}
    table = per_gpu.get((capacity, speed))
    if table is None:
        prices = share_prices(frag.slices(capacity, speed), capacity)
        sizes = sorted(prices)
        values, _ = room_values(sizes, [prices[s] for s in sizes], capacity)
        table = per_gpu[(capacity, speed)] = (values, prices)
    return table


def slice_cost(node: NodeView, position: int, ask: Ask, frag: Fragmentation) -> float:
    """``v + V(r - s) - V(r)`` of the slice taking the GPU at ``position`` (0 at best, in GPUs).
    A share of no typical size is priced at what typical shares could fill in its place."""
    g = node.gpus[position]
    values, prices = price_table(frag, g.capacity, g.speed)
    units = max(0, min(g.capacity, ask.units(g)))
    room = max(0, min(g.capacity, g.free))
    price = prices.get(units, values[units])
    return round(price + values[max(0, room - units)] - values[room], 9)
