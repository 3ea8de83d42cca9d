"""The cluster during one cycle (or one replay), grouped so that what scores alike is scored once.

Choosing a node for a request means scoring every node, and at 1,000 nodes that is most of a
cycle. Two groupings make it cheap without changing a decision:

- *Pair classes* (one-GPU requests under the policies that break ties by node order): every
  (node, GPU) pair whose node key, node memory, node use and GPU state are equal scores alike and
  fits alike, so each class is scored once, and its first member in (node rank, position) order
  stands for it. Each pool (the free GPUs, or one MPS user's: a request looks only at free GPUs
  and its own user's) keeps, per request shape, a *ranking* of its classes by the policy's
  primary score; a request reads the best levels of its pools and stops at the first that fits.
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
import weakref
from collections.abc import Sequence

from .model import GpuState
from .rules import SHAPE_RULES, USER_RULES, Ask, gpu_passes
from .scoring import Context, NodeChoice, evaluate, policy_of, request_shape
from .select import pick_node, pick_option
from .view import NodeView, node_shape

Member = tuple[int, int]  # (node rank, GPU position)
Group = tuple[int, bool]  # (interned GPU part, node in use): all a policy's rest reads of a pair


def _gpu_part(g: GpuState) -> tuple:
    """Everything the rules and scorers read of the GPU a slice lands on."""
    return (g.free, g.capacity, g.model, g.memory_mib, g.memory_used_mib, g.user, g.classes,
            g.available, g.speed, g.capped_users, g.uncapped_users, g.max_clients)


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

    def prepare(self, asks: Sequence[Ask]) -> None:
        """Score every class for these requests' shapes now, so that the first requests of a cycle
        do not pay for it (the daemon prepares its typical requests when it builds a placer)."""
        if self.policy.every_option:
            return
        if self._pairs is None:
            self._pairs = _Pairs(self)
        for ask in asks:
            if ask.request.gpus == 1:
                for user in list(self._pairs.logs):
                    self._pairs.ranking(ask, user)

    def release_holds(self) -> None:
        """Reservations last one cycle: held nodes join their classes again."""
        if self._pairs is not None:
            for rank in sorted(self.held):
                self._pairs.add(rank)
        self.held.clear()

    def choose(self, ask: Ask, rng: random.Random | None) -> tuple[int, tuple[int, ...]] | None:
        """(node rank, GPU positions) for the request, or None when no node can host it now."""
        if ask.request.nodes is not None:
            return self._choose_among(ask, rng)
        if rng is None and ask.request.gpus == 1 and not self.policy.every_option:
            if self._pairs is None:
                self._pairs = _Pairs(self)
            found = self._pairs.choose(ask)
            if found is not _MIXED:
                return found
        if self._shapes is None:
            self._shapes = _Shapes(self)
        return self._shapes.choose(ask, rng)

    def _choose_among(self, ask: Ask, rng: random.Random | None) -> tuple[int, tuple[int, ...]] | None:
        """A request restricted to some nodes: those nodes scored one by one (no grouping: classes
        and shapes span nodes), the same choice :func:`.scoring.evaluate` over the whole cluster
        would make were the other nodes absent."""
        groups, choices = [], []
        ranks = sorted(self.rank_of[n] for n in ask.request.nodes if n in self.rank_of)
        _score_one_by_one(self, ranks, ask, groups, choices)
        return _pick(groups, choices, rng)

    def update(self, rank: int, view: NodeView) -> None:
        """The node at ``rank`` is now ``view`` (a decision placed something on it)."""
        self.views[rank] = view
        if self._pairs is not None:
            self._pairs.replace(rank)
        if self._shapes is not None:
            self._shapes.replace(rank)


def _score_one_by_one(state: ClusterState, ranks, ask: Ask, groups: list, choices: list) -> None:
    """Score the nodes at ``ranks`` each on its own, adding a group of one per node that can host."""
    for rank in ranks:
        choice = evaluate(state.views[rank], ask, state.ctx)
        if choice is not None:
            groups.append((choice.score, [rank]))
            choices.append(choice)


def _pick(groups: list, choices: list, rng: random.Random | None) -> tuple[int, tuple[int, ...]] | None:
    """(node rank, GPU positions) of the best group's choice; None when no node could host."""
    if not groups:
        return None
    gi, rank = pick_node(groups, rng)
    return rank, pick_option(choices[gi].options, rng)


_MIXED = object()  # some fitting GPUs take a slice, others whole: the node path decides
_UNSEEN = object()


class _Ranking:
    """The classes of one pool (the free GPUs, or one user's) ordered by ``primary`` for one
    (share, GPUs, CPU) of a request: by level, then by *rest group* (GPU part, node in use), the
    most a policy's ``rest`` reads, so a request reads the best level first, stops there, and
    computes ``rest`` once per group.

    Classes are scored when a request of this shape first needs them: ``seen`` is how far into
    the pool's log (every class it ever had, in order) this ranking has read. Rankings are per pool
    because a request sees only two pools (free GPUs and its user's): the classes that decisions
    keep making in other users' pools are scored only when those users ask.
    """

    def __init__(self) -> None:
        self.key_of: dict[int, tuple[tuple, Group]] = {}
        self.levels: dict[tuple, dict[Group, set[int]]] = {}
        self.order: list[tuple] = []  # the levels' keys, ascending
        self.rest: dict[object, dict[Group, tuple]] = {}  # SLO class -> rest group -> rest key
        self.seen = 0

    def insert(self, cid: int, key: tuple, group: Group) -> None:
        self.key_of[cid] = key, group
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = {}
            bisect.insort(self.order, key)
        level.setdefault(group, set()).add(cid)

    def discard(self, cid: int) -> None:
        found = self.key_of.pop(cid, None)
        if found is None:
            return
        key, group = found
        level = self.levels[key]
        members = level[group]
        members.discard(cid)
        if not members:
            del level[group]
            if not level:
                del self.levels[key]
                self.order.pop(bisect.bisect_left(self.order, key))


class _Pairs:
    """Pair classes, their members in order, and per-request-shape rankings of their scores."""

    def __init__(self, state: ClusterState):
        self.state = weakref.proxy(state)  # no cycle: the state is freed as soon as it is dropped
        self.node_ids: dict[tuple, int] = {}
        self.ids: dict[tuple, int] = {}
        self.next_id = itertools.count()  # never reused: the score caches are keyed by class
        self.logs: dict[int | None, list[int]] = {}  # MPS owner -> its classes, in order made
        self.members: dict[int, list[Member]] = {}
        self.joined: dict[int, list[tuple[int, int]]] = {}  # node rank -> (position, class) it is in
        self.signature: dict[int, tuple] = {}
        self.gpu_ids: dict[tuple, int] = {}  # a class's GPU part, interned: rules read only it
        self.gpu_of: dict[int, int] = {}
        self.gpu_sample: dict[int, GpuState] = {}  # a GPU of each part (rules read only its part)
        # the node's free CPU and memory, for classes whose node reports either (the daemon's do not)
        self.room: dict[int, tuple[int | None, int | None]] = {}
        self.by_user: dict[int | None, set[int]] = {}
        self.grades: dict[tuple[int, float], int] = {}  # (capacity, speed) -> live classes of it
        self.rankings: dict[int | None, dict[tuple, _Ranking]] = {}  # owner -> (share, gpus, cpu) -> ranking
        # what the GPU rules read of a request -> GPU part -> None (does not fit) or whether the
        # request takes a slice of it
        self.fits: dict[tuple, dict[int, object]] = {}
        for rank in range(len(state.views)):
            if rank not in state.held:
                self.add(rank)

    def _node_part(self, view: NodeView) -> int:
        """Everything the rules and scorers read of a slice's node besides its GPU, interned."""
        part = (view.key, view.memory_mib_free, view.in_use)
        return self.node_ids.setdefault(part, len(self.node_ids))

    def add(self, rank: int) -> None:
        view = self.state.views[rank]
        node = self._node_part(view)
        joined = self.joined[rank] = []
        for pos, g in enumerate(view.gpus):
            if not g.available or g.free <= 0 or not g.client_room:
                continue  # fits nothing
            sig = (node, _gpu_part(g))
            cid = self.ids.get(sig)
            if cid is None:
                cid = self.ids[sig] = next(self.next_id)
                self.members[cid] = []
                self.signature[cid] = sig
                if view.cpu_milli_free is not None or view.memory_mib_free is not None:
                    self.room[cid] = (view.cpu_milli_free, view.memory_mib_free)
                gid = self.gpu_of[cid] = self.gpu_ids.setdefault(sig[1], len(self.gpu_ids))
                self.gpu_sample.setdefault(gid, g)
                self.by_user.setdefault(g.user, set()).add(cid)
                grade = (g.capacity, g.speed)
                self.grades[grade] = self.grades.get(grade, 0) + 1
                self.logs.setdefault(g.user, []).append(cid)
            bisect.insort(self.members[cid], (rank, pos))
            joined.append((pos, cid))

    def drop(self, rank: int) -> None:
        for pos, cid in self.joined.pop(rank, ()):
            members = self.members[cid]
            members.pop(bisect.bisect_left(members, (rank, pos)))
            if not members:
                sig = self.signature.pop(cid)
                g = self.gpu_sample[self.gpu_of.pop(cid)]  # a GPU of the class's part
                del self.ids[sig], self.members[cid]
                self.room.pop(cid, None)
                user, grade = g.user, (g.capacity, g.speed)
                self.by_user[user].discard(cid)
                self.grades[grade] -= 1
                if not self.grades[grade]:
                    del self.grades[grade]
                for ranking in self.rankings.get(user, {}).values():
                    ranking.discard(cid)

    def replace(self, rank: int) -> None:
        if rank in self.state.held:
            return
        self.drop(rank)
        self.add(rank)

    def ranking(self, ask: Ask, user: int | None) -> _Ranking:
        """The ranking of ``user``'s pool for the request's shape, with every class the pool got
        since its last use scored."""
        req = ask.request
        shape = (req.share, req.gpus, req.whole, req.cpu_milli)
        rankings = self.rankings.setdefault(user, {})
        ranking = rankings.get(shape)
        if ranking is None:
            ranking = rankings[shape] = _Ranking()
        log = self.logs.get(user, ())
        if ranking.seen < len(log):
            views, policy, ctx = self.state.views, self.state.policy, self.state.ctx
            for cid in log[ranking.seen:]:
                members = self.members.get(cid)
                if not members:
                    continue  # dropped since
                gid = self.gpu_of[cid]
                gpu = self.gpu_sample[gid]
                if ask.units(gpu) > gpu.free:
                    continue  # no request of this shape fits it, ever: leave it out
                rank, pos = members[0]
                view = views[rank]
                ranking.insert(cid, policy.primary(view, (pos,), ask, ctx), (gid, view.in_use))
            ranking.seen = len(log)
        return ranking

    def _fit(self, fits: dict[int, object], gid: int, ask: Ask):
        """None when a GPU of this part fails a rule, else whether the request takes a slice of it.
        What holds for the request's shape is kept; the rules that depend on its user are asked anew."""
        fit = fits.get(gid, _UNSEEN)
        gpu = self.gpu_sample[gid]
        if fit is _UNSEEN:
            fit = fits[gid] = ((ask.units(gpu) < gpu.capacity)
                               if all(r.passes(gpu, ask) for r in SHAPE_RULES) else None)
        if fit is not None:
            for rule in USER_RULES:  # a loop, not all(): asked millions of times a cycle in multi-user mode
                if not rule.passes(gpu, ask):
                    return None
        return fit

    def _has_room(self, cid: int, req) -> bool:
        cpu, mem = self.room.get(cid, (None, None))
        return (cpu is None or req.cpu_milli <= cpu) and (mem is None or req.node_memory_mib <= mem)

    def choose(self, ask: Ask):
        state = self.state
        req = ask.request
        # Outside multi-user mode a request looks only at free GPUs and its user's own; in it, at
        # every GPU. What fits a shape is kept per shape (``_fit`` asks the per-user rules anew).
        fits = self.fits.setdefault((req.share, req.gpus, req.whole, req.memory_mib, req.models, req.slo_class), {})
        users = [None, *(u for u in self.by_user if u is not None)] if state.ctx.config.multi_user \
            else [None, req.user]
        # Whether the request takes a slice or a whole GPU depends only on the GPU's capacity and
        # speed: only when the cluster has GPUs of both kinds is it worked out class by class.
        kinds = {ask.units_at(capacity, speed) < capacity for capacity, speed in self.grades}
        if len(kinds) == 2 and self._mixed(users, fits, ask):
            return _MIXED
        whole = kinds == {False}
        rankings = [self.ranking(ask, user) for user in users]
        heads = [len(r.order) - 1 for r in rankings]  # the pools' best levels not yet read
        best = None
        while best is None and any(h >= 0 for h in heads):
            key = max(r.order[h] for r, h in zip(rankings, heads) if h >= 0)
            groups = []
            for i, ranking in enumerate(rankings):
                if heads[i] >= 0 and ranking.order[heads[i]] == key:
                    heads[i] -= 1
                    groups += [(group, cids, ranking) for group, cids in ranking.levels[key].items()
                               if self._fit(fits, group[0], ask) is not None]
            if groups:
                best = self._best_pair(key, groups, ask, whole)
        for rank in sorted(state.held):
            choice = evaluate(state.views[rank], ask, state.ctx)
            if choice is not None and (best is None or (choice.score, -rank) > best[:2]):
                best = (choice.score, -rank, (), -1, choice.options[0])
        return None if best is None else (-best[1], best[4])

    def _mixed(self, users: list, fits: dict[int, object], ask: Ask) -> bool:
        """Whether, among the classes that fit and have room, some take a slice and others a whole GPU."""
        kinds = {self._fit(fits, self.gpu_of[cid], ask) for user in users for cid in self.by_user.get(user, ())
                 if self._has_room(cid, ask.request)}
        kinds.discard(None)
        return len(kinds) == 2

    def _best_pair(self, primary: tuple, groups: list[tuple[Group, set[int], _Ranking]], ask: Ask, whole: bool):
        """The greatest (key, -rank, after, -position) over the valid pairs of the classes in
        ``groups`` (all of the best ``primary``), with the positions; None when none has a valid
        pair. Groups are taken best ``rest`` first, and the first whose classes have a valid pair
        holds the answer. A class's first member is valid unless whole GPUs are asked for and an
        earlier GPU of its node fits (the node's candidate is then that GPU)."""
        ctx, policy, members, req = self.state.ctx, self.state.policy, self.members, ask.request
        by_rest: dict[tuple, list[int]] = {}
        for group, cids, ranking in groups:
            rests = ranking.rest.setdefault(req.slo_class, {})
            rest = rests.get(group)
            if rest is None:
                rank, pos = members[next(iter(cids))][0]
                rest = rests[group] = policy.rest(self.state.views[rank], (pos,), ask, ctx)
            by_rest.setdefault(rest, []).extend(
                (cid for cid in cids if self._has_room(cid, req)) if self.room else cids)
        for rest in sorted(by_rest, reverse=True):
            found = self._first_pair(by_rest[rest], ask, whole)
            if found is not None:
                (neg_rank, after, neg_pos), (_, pos) = found
                return primary + rest, neg_rank, after, neg_pos, (pos,)
        return None

    def _first_pair(self, cids: list[int], ask: Ask, whole: bool):
        """Among classes of equal key, the greatest (-rank, after, -position) over their valid
        pairs, with the pair; None when none has one."""
        members, views, ctx, after = self.members, self.state.views, self.state.ctx, self.state.policy.after
        best = None
        for cid in (sorted(cids, key=lambda c: members[c][0]) if whole else cids):
            if best is not None and members[cid][0][0] > -best[0][0]:
                if whole:
                    break  # a class's valid pair is never before its first member: none is left
                continue
            member = self._first_valid(cid, ask) if whole else members[cid][0]
            if member is None:
                continue
            rank, pos = member
            cand = (-rank, after(views[rank], (pos,), ask, ctx), -pos)
            if best is None or cand > best[0]:
                best = cand, member
        return best

    def _first_valid(self, cid: int, ask: Ask) -> Member | None:
        for rank, pos in self.members[cid]:
            view = self.state.views[rank]
            if next(i for i, g in enumerate(view.gpus) if gpu_passes(g, ask)) == pos:
                return rank, pos
        return None


class _Shapes:
    """Nodes grouped by shape, each (shape, request shape) evaluated once. A slice in plain units
    is asked only of the shapes whose freest GPU has room for it (``room``, sorted by that room),
    a request of whole GPUs only of those with that many GPUs free (``wholes``): on a filling
    cluster of many shapes most have neither, and walking them all was most of a replay (the
    random policy, whose nodes soon all differ)."""

    def __init__(self, state: ClusterState):
        self.state = weakref.proxy(state)  # no cycle: the state is freed as soon as it is dropped
        self.ids: dict[tuple, int] = {}  # shapes are deep tuples: hash each once
        self._room: dict[int, tuple[int, int]] = {}  # shape -> (most free units, whole GPUs free)
        self.shapes = [self._id(v) for v in state.views]
        self.groups: dict[int, list[int]] = {}
        for rank, shape in enumerate(self.shapes):
            self.groups.setdefault(shape, []).append(rank)
        self.memo: dict[tuple, dict[int, NodeChoice | None]] = {}  # request shape -> shape -> choice
        self.room = sorted((self._room[shape][0], shape) for shape in self.groups)
        self.wholes = sorted((self._room[shape][1], shape) for shape in self.groups)

    def _id(self, view: NodeView) -> int:
        shape = self.ids.setdefault(node_shape(view), len(self.ids))
        self._room[shape] = (view.most_free, view.whole_free)  # a shape's: its GPUs' free units are part of it
        return shape

    def _candidates(self, ask: Ask):
        """The live shapes that may host the request: for a slice in plain units those with a GPU
        of room for it, for whole GPUs those with as many free, else all (any order: the pick does
        not depend on it)."""
        if ask.whole_gpus:
            index, least = self.wholes, ask.request.gpus
        elif ask.plain_units is not None and ask.request.gpus == 1:
            index, least = self.room, ask.plain_units
        else:
            return self.groups.items()
        return ((shape, self.groups[shape]) for _, shape in index[bisect.bisect_left(index, (least, -1)):])

    def choose(self, ask: Ask, rng: random.Random | None):
        state = self.state
        rshape = request_shape(ask.request)
        groups, choices = [], []
        memo = self.memo.setdefault(rshape, {})
        for shape, ranks in self._candidates(ask):
            free = [r for r in ranks if r not in state.held] if state.held else ranks
            if free:
                choice = memo.get(shape, memo)
                if choice is memo:
                    choice = memo[shape] = evaluate(state.views[free[0]], ask, state.ctx)
                if choice is not None:
                    groups.append((choice.score, free))
                    choices.append(choice)
        _score_one_by_one(state, sorted(state.held), ask, groups, choices)  # reserved GPUs: no shape stands for them
        return _pick(groups, choices, rng)

    def replace(self, rank: int) -> None:
        old = self.shapes[rank]
        ranks = self.groups[old]
        ranks.pop(bisect.bisect_left(ranks, rank))
        if not ranks:
            del self.groups[old]
            for memo in self.memo.values():
                memo.pop(old, None)
            del self.room[bisect.bisect_left(self.room, (self._room[old][0], old))]
            del self.wholes[bisect.bisect_left(self.wholes, (self._room[old][1], old))]
        view = self.state.views[rank]
        shape = self._id(view)
        if shape not in self.groups:
            bisect.insort(self.room, (view.most_free, shape))
            bisect.insort(self.wholes, (view.whole_free, shape))
        bisect.insort(self.groups.setdefault(shape, []), rank)
        self.shapes[rank] = shape
