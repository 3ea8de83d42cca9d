"""FGD's fragmentation measure (Weng et al., USENIX ATC'23), over a distribution of typical requests.

A node's idle GPU capacity is a fragment for a typical request when that request could not use it:
all of it when the request cannot run on the node at all (model, CPU, too few GPUs with room, or no
GPU wanted), else the idle part of the GPUs with less room than the request needs. ``F_n`` is the
expectation over the typical requests, in GPUs (idle share / capacity).

``F_n`` depends only on the node's free CPU and the sorted rooms of its available GPUs
(:attr:`.view.NodeView.key`),
and is summed in key order, so equal keys give bit-for-bit equal values whichever node came first.
"""
from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import PolicyConfig, Request
from .rules import Ask
from .units import units_at
from .view import NodeView

TYPICAL_COVERAGE = 0.95  # keep the most frequent request shapes until they cover this share

Entry = tuple[int, int, str, float]  # (free, capacity, model, speed) of one available GPU
Key = tuple[int | None, tuple[Entry, ...]]  # (free CPU, sorted entries)


@dataclass(frozen=True)
class Typical:
    """One typical request shape and its probability."""

    share: int
    gpus: int
    cpu_milli: int
    models: frozenset[str]
    p: float


def typical_requests(workload: Iterable[tuple[Request, float]],
                     coverage: float = TYPICAL_COVERAGE) -> tuple[Typical, ...]:
    """Group weighted requests by (CPU, GPUs, share, models); keep the most frequent until they
    cover ``coverage`` of the weight, renormalised (the FGD paper's "typical pods")."""
    weights: Counter = Counter()
    for req, w in workload:
        weights[(req.cpu_milli, req.share, req.gpus, tuple(sorted(m.lower() for m in req.models)))] += w
    total = sum(weights.values())
    if total <= 0:
        return ()
    ranked = sorted(weights.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    kept, cum = [], 0.0
    for key, w in ranked:
        if cum >= coverage * total:
            break
        kept.append((key, w))
        cum += w
    return tuple(Typical(share=s, gpus=k, cpu_milli=c, models=frozenset(m), p=w / cum)
                 for (c, s, k, m), w in kept)


def key_after(node: NodeView, positions: Sequence[int], ask: Ask) -> Key:
    """The node's key once ``ask`` takes the GPUs at ``positions`` and its CPU (what
    :func:`.apply.place_on` would leave, without building it)."""
    cpu, entries = node.key
    entries = list(entries)
    for i in positions:
        g = node.gpus[i]
        if g.available:
            entries.pop(bisect.bisect_left(entries, (g.free, g.capacity, g.model, g.speed)))
            bisect.insort(entries, (g.free - ask.units(g), g.capacity, g.model, g.speed))
    return (None if cpu is None else cpu - ask.request.cpu_milli, tuple(entries))


class Fragmentation:
    """``F_n`` for nodes, memoised by their key."""

    def __init__(self, typical: Sequence[Typical], config: PolicyConfig, ref_speed: float = 1.0):
        self.typical = tuple(typical)
        self.config = config
        self.ref_speed = ref_speed
        self._memo: dict[Key, float] = {}
        self._last: tuple[NodeView | None, float] = (None, 0.0)  # scores come node by node
        self._rows: dict[tuple[str, int | None], tuple[float, tuple[tuple[int, int, float], ...]]] = {}

    def slices(self, capacity: int, speed: float) -> dict[int, float]:
        """Units -> probability of the typical one-GPU requests that are slices on a GPU of this
        capacity and speed (what :mod:`.stranding` and :mod:`.prices` weigh a GPU's room by)."""
        out: dict[int, float] = {}
        for m in self.typical:
            if m.gpus == 1:
                units = units_at(m.share, speed, self.config, self.ref_speed)
                if 0 < units < capacity:
                    out[units] = out.get(units, 0.0) + m.p
        return out

    def of(self, node: NodeView) -> float:
        last, value = self._last
        if node is not last:  # hashing a node's key costs more than the rest of a score
            value = self.of_key(node.key)
            self._last = node, value
        return value

    def of_key(self, key: Key) -> float:
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = self._compute(*key)
        return value

    def _compute(self, cpu_free: int | None, entries: tuple[Entry, ...]) -> float:
        idle = [free / capacity for free, capacity, _, _ in entries]
        total_idle = sum(idle)
        if total_idle == 0:
            return 0.0
        model = entries[0][2]
        if not self.config.reference_model and all(e[2] == model for e in entries):
            return self._by_room(cpu_free, entries, idle, total_idle, model.lower())
        frag = 0.0
        for m in self.typical:
            if m.gpus == 0 or (cpu_free is not None and m.cpu_milli > cpu_free):
                frag += m.p * total_idle
                continue
            stranded, roomy = 0.0, 0
            for (free, _, model, speed), i in zip(entries, idle):
                if (m.models and model.lower() not in m.models) or \
                        units_at(m.share, speed, self.config, self.ref_speed) > free:
                    stranded += i
                else:
                    roomy += 1
            frag += m.p * (stranded if roomy >= m.gpus else total_idle)
        return frag

    def _by_room(self, cpu_free: int | None, entries: tuple[Entry, ...], idle: list[float],
                 total_idle: float, model: str) -> float:
        """:meth:`_compute` for GPUs of one model in plain units: the GPUs a typical request cannot
        use are those with less room than its share, a prefix of the sorted entries, so their idle
        sum is a prefix sum; typical requests of one (share, GPUs) are taken together."""
        frees = [free for free, _, _, _ in entries]
        prefix = [0.0]
        for i in idle:
            prefix.append(prefix[-1] + i)
        never, rows = self._rows_for(model, cpu_free)
        frag = never * total_idle
        for share, gpus, p in rows:
            stranded = bisect.bisect_left(frees, share)
            frag += p * (prefix[stranded] if len(frees) - stranded >= gpus else total_idle)
        return frag

    def _rows_for(self, model: str, cpu_free: int | None) -> tuple[float, tuple[tuple[int, int, float], ...]]:
        """For a node of one model with this free CPU: the probability of the typical requests that
        can never run there, and the others' probabilities summed by (share, GPUs)."""
        found = self._rows.get((model, cpu_free))
        if found is None:
            never, rows = 0.0, {}
            for m in self.typical:
                if m.gpus == 0 or (cpu_free is not None and m.cpu_milli > cpu_free) or \
                        (m.models and model not in m.models):
                    never += m.p
                else:
                    rows[(m.share, m.gpus)] = rows.get((m.share, m.gpus), 0.0) + m.p
            found = self._rows[(model, cpu_free)] = (never, tuple((s, k, p) for (s, k), p in rows.items()))
        return found
