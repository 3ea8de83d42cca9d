"""The cluster during one cycle (or one replay), grouped so that what scores alike is scored once.

Choosing a node for a request means scoring every node, and at 1,000 nodes that is most of a
cycle. Two groupings make it cheap without changing a decision:

- *Pair classes* (one-GPU requests under the policies that break ties by node order): every
  (node, GPU) pair whose node key, node memory, node use and GPU state are equal scores alike and
  fits alike, so each class is scored once, and its first member in (node rank, position) order
  stands for it. Classes are indexed by the GPU's MPS owner: a request looks only at free GPUs and
  its own user's.
- *Node shapes* (everything else: the random policy, multi-GPU and CPU-only tasks): nodes in the
  same state are scored once per request shape by :func:`.scoring.evaluate`, as the simulator
  always did.

Either way the winner is the one :func:`.scoring.evaluate` over every node and
:func:`.select.pick_node` would give (``tests/unit/test_policy_fast.py`` checks it against that
straightforward evaluation). GPUs reserved for a starving request belong to no class; their nodes
are scored one by one.
"""
from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from .model import GpuState
from .rules import GPU_RULES, Ask, gpu_passes
from .scoring import Context, NodeChoice, evaluate, policy_of, request_shape
from .select import pick_node, pick_option
from .view import NodeView, node_shape

Member = tuple[int, int]  # (node rank, GPU position)


def _gpu_part(g: GpuState) -> tuple:
    """Everything the rules and scorers read of the GPU a slice lands on."""
    return (g.free, g.capacity, g.model, g.memory_mib, g.memory_used_mib, g.user, g.classes,
            g.available, g.speed)


class ClusterState:
    """The nodes in rank order as earlier decisions left them; each grouping is built on first use
    (a daemon cycle of slices never needs node shapes) and kept up to date by :meth:`update`."""

    def __init__(self, views: Sequence[NodeView], ctx: Context):
        self.views = list(views)
        self.ctx = ctx
        self.policy = policy_of(ctx.config)
        self.rank_of = {v.name: r for r, v in enumerate(self.views)}
        self.held: set[int] = set()  # ranks of nodes with a reserved GPU
        self._pairs: _Pairs | None = None
        self._shapes: _Shapes | None = None

    def hold(self, node: str) -> None:
        """A GPU of ``node`` is now reserved: score that node on its own from now on."""
        rank = self.rank_of[node]
        self.held.add(rank)
        if self._pairs is not None:
            self._pairs.drop(rank)

    def choose(self, ask: Ask, rng: random.Random | None) -> tuple[int, tuple[int, ...]] | None:
        """(node rank, GPU positions) for the request, or None when no node can host it now."""
        if rng is None and ask.request.gpus == 1 and not self.policy.every_option:
            if self._pairs is None:
                self._pairs = _Pairs(self)
            found = self._pairs.choose(ask)
            if found is not _MIXED:
                return found
        if self._shapes is None:
            self._shapes = _Shapes(self)
        return self._shapes.choose(ask, rng)

    def update(self, rank: int, view: NodeView) -> None:
        """The node at ``rank`` is now ``view`` (a decision placed something on it)."""
        old = self.views[rank]
        self.views[rank] = view
        if self._pairs is not None:
            self._pairs.replace(rank, old)
        if self._shapes is not None:
            self._shapes.replace(rank)


_MIXED = object()  # some fitting GPUs take a slice, others whole: the node path decides
_UNSEEN = object()


class _Pairs:
    """Pair classes, their members in order, and per-request caches of their scores."""

    def __init__(self, state: ClusterState):
        self.state = state
        self.node_ids: dict[tuple, int] = {}
        self.ids: dict[tuple, int] = {}
        self.next_id = itertools.count()  # never reused: the score caches are keyed by class
        self.members: dict[int, list[Member]] = {}
        self.signature: dict[int, tuple] = {}
        self.gpu_ids: dict[tuple, int] = {}  # a class's GPU part, interned: rules read only it
        self.gpu_of: dict[int, int] = {}
        self.room: dict[int, tuple[int | None, int | None]] = {}  # the node's free CPU and memory
        self.by_user: dict[int | None, set[int]] = {}
        self.primary: dict[tuple, dict[int, tuple]] = {}  # (share, gpus, cpu) -> class -> key
        # what the GPU rules read of a request -> GPU part -> None (does not fit) or whether the
        # request takes a slice of it
        self.fits: dict[tuple, dict[int, object]] = {}
        for rank in range(len(state.views)):
            if rank not in state.held:
                self.add(rank)

    def _node_part(self, view: NodeView) -> int:
        """Everything the rules and scorers read of a slice's node besides its GPU, interned."""
        part = (view.key, view.memory_mib_free, any(g.used for g in view.gpus))
        return self.node_ids.setdefault(part, len(self.node_ids))

    def add(self, rank: int) -> None:
        view = self.state.views[rank]
        node = self._node_part(view)
        for pos, g in enumerate(view.gpus):
            if not g.available or g.free <= 0:
                continue  # fits nothing
            sig = (node, _gpu_part(g))
            cid = self.ids.get(sig)
            if cid is None:
                cid = self.ids[sig] = next(self.next_id)
                self.members[cid] = []
                self.signature[cid] = sig
                self.room[cid] = (view.cpu_milli_free, view.memory_mib_free)
                self.gpu_of[cid] = self.gpu_ids.setdefault(sig[1], len(self.gpu_ids))
                self.by_user.setdefault(g.user, set()).add(cid)
            bisect.insort(self.members[cid], (rank, pos))

    def drop(self, rank: int, view: NodeView | None = None) -> None:
        view = view or self.state.views[rank]
        node = self._node_part(view)
        for pos, g in enumerate(view.gpus):
            cid = self.ids.get((node, _gpu_part(g))) if g.available and g.free > 0 else None
            if cid is None:
                continue
            members = self.members[cid]
            members.pop(bisect.bisect_left(members, (rank, pos)))
            if not members:
                sig = self.signature.pop(cid)
                del self.ids[sig], self.members[cid], self.gpu_of[cid], self.room[cid]
                self.by_user[sig[1][5]].discard(cid)

    def replace(self, rank: int, old: NodeView) -> None:
        if rank in self.state.held:
            return
        self.drop(rank, old)
        self.add(rank)

    def choose(self, ask: Ask):
        state, ctx, policy = self.state, self.state.ctx, self.state.policy
        views, members = state.views, self.members
        req = ask.request
        fits = self.fits.setdefault((req.share, req.gpus, req.memory_mib, req.models, req.user,
                                     req.slo_class), {})
        slices = wholes = False
        primaries = self.primary.setdefault((req.share, req.gpus, req.cpu_milli), {})
        scored: list[tuple[tuple, int]] = []
        pools = [self.by_user.get(None, ())]
        if ctx.config.multi_user:
            pools += [c for u, c in self.by_user.items() if u is not None]
        else:
            pools.append(self.by_user.get(req.user, ()))
        for pool in pools:
            for cid in pool:
                gid = self.gpu_of[cid]
                fit = fits.get(gid, _UNSEEN)
                if fit is _UNSEEN:
                    rank, pos = members[cid][0]
                    gpu = views[rank].gpus[pos]
                    fit = fits[gid] = ((ask.units(gpu) < gpu.capacity)
                                       if all(r.passes(gpu, ask) for r in GPU_RULES) else None)
                if fit is None:
                    continue
                cpu, mem = self.room[cid]
                if (cpu is not None and req.cpu_milli > cpu) or \
                        (mem is not None and req.node_memory_mib > mem):
                    continue
                if fit:
                    slices = True
                else:
                    wholes = True
                primary = primaries.get(cid)
                if primary is None:
                    rank, pos = members[cid][0]
                    primary = primaries[cid] = policy.primary(views[rank], (pos,), ask, ctx)
                scored.append((primary, cid))
        if slices and wholes:
            return _MIXED
        scored.sort(key=lambda pc: pc[0], reverse=True)
        best = self._best_pair(scored, ask, whole=wholes)
        for rank in sorted(state.held):
            choice = evaluate(state.views[rank], ask, ctx)
            if choice is not None and (best is None or (choice.score, -rank) > best[:2]):
                best = (choice.score, -rank, (), -1, choice.options[0])
        return None if best is None else (-best[1], best[4])

    def _best_pair(self, scored: list[tuple[tuple, int]], ask: Ask, whole: bool):
        """The greatest (key, -rank, after, -position) over valid pairs, with the positions.

        ``rest`` is computed only for the classes tied on the best ``primary`` that still has a
        valid pair; a class's first member is valid unless whole GPUs are asked for and an earlier
        GPU of its node fits (the node's candidate is then that GPU)."""
        state, ctx, policy = self.state, self.state.ctx, self.state.policy
        best = None
        i = 0
        while i < len(scored) and best is None:
            j = i
            while j < len(scored) and scored[j][0] == scored[i][0]:
                j += 1
            group = []
            for primary, cid in scored[i:j]:
                rank, pos = self.members[cid][0]
                group.append((primary + policy.rest(state.views[rank], (pos,), ask, ctx), cid))
            group.sort(key=lambda kc: kc[0], reverse=True)
            for key, cid in group:
                if best is not None and key < best[0]:
                    break
                member = self._first_valid(cid, ask) if whole else self.members[cid][0]
                if member is None:
                    continue
                rank, pos = member
                cand = (key, -rank, policy.after(state.views[rank], (pos,), ask, ctx), -pos, (pos,))
                if best is None or cand[:4] > best[:4]:
                    best = cand
            i = j
        return best

    def _first_valid(self, cid: int, ask: Ask) -> Member | None:
        for rank, pos in self.members[cid]:
            view = self.state.views[rank]
            if next(i for i, g in enumerate(view.gpus) if gpu_passes(g, ask)) == pos:
                return rank, pos
        return None


class _Shapes:
    """Nodes grouped by shape, each (shape, request shape) evaluated once."""

    def __init__(self, state: ClusterState):
        self.state = state
        self.ids: dict[tuple, int] = {}  # shapes are deep tuples: hash each once
        self.shapes = [self._id(v) for v in state.views]
        self.groups: dict[int, list[int]] = {}
        for rank, shape in enumerate(self.shapes):
            self.groups.setdefault(shape, []).append(rank)
        self.memo: dict[int, dict[tuple, NodeChoice | None]] = {}

    def _id(self, view: NodeView) -> int:
        return self.ids.setdefault(node_shape(view), len(self.ids))

    def choose(self, ask: Ask, rng: random.Random | None):
        state = self.state
        rshape = request_shape(ask.request)
        groups, choices = [], []
        for shape, ranks in self.groups.items():
            per_shape = self.memo.get(shape)
            if per_shape is None:
                per_shape = self.memo[shape] = {}
            free = [r for r in ranks if r not in state.held] if state.held else ranks
            if free:
                choice = per_shape.get(rshape, per_shape)
                if choice is per_shape:
                    choice = per_shape[rshape] = evaluate(state.views[free[0]], ask, state.ctx)
                if choice is not None:
                    groups.append((choice.score, free))
                    choices.append(choice)
        for rank in sorted(state.held):  # reservations name GPUs: no shape stands for them
            choice = evaluate(state.views[rank], ask, state.ctx)
            if choice is not None:
                groups.append((choice.score, [rank]))
                choices.append(choice)
        if not groups:
            return None
        gi, rank = pick_node(groups, rng)
        return rank, pick_option(choices[gi].options, rng)

    def replace(self, rank: int) -> None:
        old = self.shapes[rank]
        ranks = self.groups[old]
        ranks.pop(bisect.bisect_left(ranks, rank))
        if not ranks:
            del self.groups[old]
            self.memo.pop(old, None)
        shape = self._id(self.state.views[rank])
        bisect.insort(self.groups.setdefault(shape, []), rank)
        self.shapes[rank] = shape
