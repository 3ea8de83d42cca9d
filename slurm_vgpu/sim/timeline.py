"""Replay a trace in time: tasks arrive at their creation time, wait while nothing fits, run for as
long as they ran in the traced cluster, and leave.

The clock moves from event to event (an arrival, an end, a waiting task's owner giving up); after
each, a scheduler decides the waiting tasks, in priority order: creation order (the trace has no
priorities, and Slurm's age factor orders equal jobs so), each class first raised by its weight
where the daemon's ``ClassPriority`` is given. Times are whole seconds, the daemon's
cycle. Where nothing ended or left since the last pass, the cluster only filled, so the tasks that
waited then wait still: such a pass decides only the new arrivals, behind what the schedulers carry
from their last whole pass (the daemon's anti-starvation reservations, Slurm's backfill
reservation). Two schedulers share the clock and the cluster (:class:`Occupancy`):

- :class:`DaemonScheduler` is the placement daemon's own decide path (:meth:`Placer.decide`): every
  waiting task each cycle, in order, with the policy's rules and its anti-starvation reservations,
  and, given a grace time, its preemption: a latency task that waits has the best-effort tasks
  :func:`~slurm_vgpu.policy.preemption.choose_victims` names taken off after the grace time (the
  room held by them meanwhile) and queued again, to run again from their start;
- :class:`.slurm_baseline.SlurmScheduler` is what Slurm alone would do.

A task that never ran in the traced cluster (no ``scheduled_time``) leaves the queue at its
deletion time; started in a replay, it runs until then.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..policy.apply import place_on
from ..policy.model import Decision, NodeState, PolicyConfig, Request, SloClass
from ..policy.placement import Placer
from ..policy.preemption import MOST_PER_CYCLE, Tenant, choose_victims
from ..policy.rules import Ask
from ..policy.view import NodeView
from .protocol import gpu_request
from .trace import Cluster, TimedPod


@dataclass(frozen=True)
class Start:
    """A task started on these GPU positions of the node at ``rank``."""

    pod: TimedPod
    rank: int
    positions: tuple[int, ...]
    delay: int = 0  # seconds from the decision to the start (a preemption's grace time)


@dataclass
class Outcome:
    """What one scheduling pass did: tasks started, and tasks no GPU of the cluster can ever host."""

    started: list[Start] = field(default_factory=list)
    refused: list[TimedPod] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)  # tasks taken off to be queued again
    work_lost: float = 0.0  # GPU-unit seconds the preempted tasks had run


class Scheduler(Protocol):
    """Decides a pass; the tasks it starts are on their nodes and booked in the occupancy when it
    returns. ``whole``: the tasks are the whole queue, else only new arrivals."""

    occupancy: Occupancy

    def decide(self, tasks: Sequence[TimedPod], now: int, whole: bool) -> Outcome: ...


class Occupancy:
    """The placer's cluster with every running task kept, so that a task's end can be taken off its
    node: the node is rebuilt from empty with the tasks still on it (a view keeps no per-task
    record, and a user's set of capped slices cannot be decremented)."""

    def __init__(self, cluster: Cluster, node_order: Sequence[int], config: PolicyConfig,
                 workload: Sequence[tuple[Request, float]]):
        gpus_by_node: dict[str, list] = {}
        for gpu in cluster.gpus:
            gpus_by_node.setdefault(gpu.node, []).append(gpu)
        nodes = [cluster.nodes[i] for i in node_order]
        gpus = [g for n in nodes for g in gpus_by_node.get(n.name, ())]
        self.config = config
        self.placer = Placer(gpus, config, nodes, workload)
        self.state = self.placer.state
        self.empty = list(self.state.views)
        self.on_node: list[dict[str, tuple[Request, tuple[int, ...], int]]] = [{} for _ in self.empty]
        self.begun: dict[str, int] = {}  # when each running task started
        self.units: dict[str, int] = {}  # the units each running task holds on each of its GPUs
        self.allocated = 0  # GPU units in use
        self.capacity = cluster.capacity

    def ask(self, req: Request) -> Ask:
        return Ask(req, self.config, self.state.ctx.reference_speed)

    def put(self, start: Start, end: int, begun: int) -> None:
        """Put a start decided outside the placer's decide path on its node, and book it."""
        view = place_on(self.state.views[start.rank], start.positions, self.ask(start.pod.request))
        self.state.update(start.rank, view)
        self.record(start, end, begun)

    def record(self, start: Start, end: int, begun: int) -> None:
        """Book a start (at ``begun``) that the node's view already holds, to be taken off at ``end``."""
        req = start.pod.request
        self.on_node[start.rank][req.job_id] = (req, start.positions, end)
        self.begun[req.job_id] = begun
        if start.positions:
            self.units[req.job_id] = self.ask(req).units(self.state.views[start.rank].gpus[start.positions[0]])
        self.allocated += gpu_request(req)

    def runs(self, rank: int, job_id: str, end: int) -> bool:
        """The task runs there and ends at ``end`` (not taken off by a preemption since)."""
        booked = self.on_node[rank].get(job_id)
        return booked is not None and booked[2] == end

    def view_of(self, rank: int, tasks: Iterable[tuple[Request, tuple[int, ...]]]) -> NodeView:
        view = self.empty[rank]
        for req, positions in tasks:
            view = place_on(view, positions, self.ask(req))
        return view

    def finish(self, rank: int, job_id: str) -> None:
        req, _, _ = self.on_node[rank].pop(job_id)
        del self.begun[job_id]
        self.units.pop(job_id, None)
        self.allocated -= gpu_request(req)
        self.state.update(rank, self.view_of(rank, ((r, p) for r, p, _ in self.on_node[rank].values())))


class DaemonScheduler:
    """The placement daemon's decide path under one policy; with ``preempt_grace`` (seconds), its
    preemption too."""

    def __init__(self, occupancy: Occupancy, preempt_grace: int | None = None):
        self.occupancy = occupancy
        self.preempt_grace = preempt_grace
        self.reserved: dict[str, str] = {}  # the last whole pass's reservations: gpu uuid -> job id

    def decide(self, tasks: Sequence[TimedPod], now: int, whole: bool) -> Outcome:
        occ = self.occupancy
        by_id = {p.request.job_id: p for p in tasks}
        out = Outcome()
        requests = [replace(p.request, waited_s=float(now - p.created)) for p in tasks]
        if whole:
            self.reserved = {}
        waiting = []
        for result in occ.placer.decide(requests, self.reserved if whole else dict(self.reserved)):
            pod = by_id[result.job_id]
            if isinstance(result, Decision):
                rank = occ.state.rank_of[result.node]
                gpus = occ.state.views[rank].gpus
                start = Start(pod, rank, tuple(i for i, g in enumerate(gpus) if g.uuid in result.gpu_uuids))
                occ.record(start, end_of(pod, now), now)
                out.started.append(start)
            elif result.never:
                out.refused.append(pod)
            elif pod.request.slo_class is SloClass.LATENCY:
                waiting.append(pod)
        if self.preempt_grace is not None and waiting:
            tenants = self._tenants(now + self.preempt_grace)
            for pod in waiting[:MOST_PER_CYCLE]:
                if self._preempt_for(pod, now, out, tenants):
                    tenants = self._tenants(now + self.preempt_grace)
        return out

    def _tenants(self, at: int) -> dict[str, list[Tenant]]:
        """Each GPU's running tasks as preemption weighs them, with the time each will have run ``at``."""
        occ = self.occupancy
        tenants: dict[str, list[Tenant]] = {}
        for rank, booked in enumerate(occ.on_node):
            gpus = occ.state.views[rank].gpus
            for job_id, (req, positions, _) in booked.items():
                tenant = Tenant(job_id, occ.units.get(job_id, 0), req.user, req.slo_class, req.memory_mib,
                                float(at - occ.begun[job_id]), len(positions) == 1 and not req.whole,
                                req.cpu_milli, req.node_memory_mib)
                for i in positions:
                    tenants.setdefault(gpus[i].uuid, []).append(tenant)
        return tenants

    def _preempt_for(self, pod: TimedPod, now: int, out: Outcome, tenants: dict[str, list[Tenant]]) -> bool:
        """Take the victims off (their room held until the grace time ends) and start ``pod`` there;
        whether it did."""
        occ, grace = self.occupancy, self.preempt_grace
        views = occ.state.views
        chosen = choose_victims(replace(pod.request, waited_s=float(now - pod.created)),
                                [g for v in views for g in v.gpus], tenants, occ.config, occ.state.ctx.reference_speed,
                                {v.name: NodeState(v.name, v.cpu_milli_free, v.memory_mib_free) for v in views})
        if chosen is None:
            return False
        rank = occ.state.rank_of[chosen.node]
        for victim in chosen.victims:
            occ.finish(rank, victim)
        out.preempted += chosen.victims
        out.work_lost += chosen.work_lost
        start = Start(pod, rank, (next(i for i, g in enumerate(views[rank].gpus) if g.uuid == chosen.gpu_uuid),), grace)
        occ.put(start, end_of(pod, now + grace), now + grace)
        out.started.append(start)
        return True


@dataclass
class Timeline:
    """What happened to every task, and the allocation after every event."""

    capacity: int
    waits: dict[str, int] = field(default_factory=dict)  # job id -> seconds from creation to start
    withdrawn: list[TimedPod] = field(default_factory=list)  # deleted by their owner while waiting
    refused: list[TimedPod] = field(default_factory=list)  # no GPU could ever host them
    stuck: list[TimedPod] = field(default_factory=list)  # still waiting when nothing else could happen
    times: list[int] = field(default_factory=list)  # event times
    allocated: list[int] = field(default_factory=list)  # GPU units in use after the event
    preempted: int = 0  # runs taken off for a latency task
    work_lost: float = 0.0  # GPU-unit seconds those runs had done
    work_done: dict[str, float] = field(default_factory=dict)  # class -> GPU-unit seconds of runs ended by the last arrival


def compressed(pods: Sequence[TimedPod], scale: float) -> tuple[TimedPod, ...]:
    """The tasks arriving ``scale`` times as fast from the first arrival on, each running and waiting
    for as long as before: the traced pod lists are samples of a larger cluster's tasks, so at their
    own times they load the cluster hardly at all."""
    if not pods or scale == 1:
        return tuple(pods)
    first = pods[0].created

    def moved(p: TimedPod) -> TimedPod:
        created = first + round((p.created - first) / scale)
        if p.scheduled is None:
            return TimedPod(p.request, created, created + p.deleted - p.created, None)
        scheduled = created + p.scheduled - p.created
        return TimedPod(p.request, created, scheduled + p.deleted - p.scheduled, scheduled)
    return tuple(moved(p) for p in pods)


def offered_demand(pods: Sequence[TimedPod], capacity: int) -> tuple[float, float]:
    """(mean, peak) over the arrival span of the GPU units that tasks would hold were each started
    on arrival, as a fraction of capacity: above 1, tasks must wait under any policy."""
    if not pods:
        return 0.0, 0.0
    steps: dict[int, int] = {}
    for p in pods:
        if p.runtime is not None and p.runtime > 0:
            steps[p.created] = steps.get(p.created, 0) + gpu_request(p.request)
            steps[p.created + p.runtime] = steps.get(p.created + p.runtime, 0) - gpu_request(p.request)
    first, last = pods[0].created, pods[-1].created
    level = area = peak = 0
    at = first
    for t in sorted(steps):
        if t > last:
            break
        area += level * (t - at)
        level += steps[t]
        at, peak = t, max(peak, level)
    area += level * (last - at)
    return (area / (last - first) / capacity if last > first else peak / capacity), peak / capacity


def end_of(pod: TimedPod, now: int) -> int:
    """When a task started ``now`` ends."""
    return now + pod.runtime if pod.runtime is not None else pod.deleted


def _next_time(pods: Sequence[TimedPod], nxt: int, *heaps: list) -> int | None:
    times = [pods[nxt].created] if nxt < len(pods) else []
    return min(times + [heap[0][0] for heap in heaps if heap], default=None)


def replay(pods: Sequence[TimedPod], scheduler: Scheduler, progress: Callable[[int], None] | None = None,
           class_priority: Mapping[str, int] | None = None) -> Timeline:
    """Run every task through ``scheduler``; ``pods`` in creation order, waiting in the order that
    ``class_priority`` (class name -> weight, as ``ClassPriority``) gives them."""
    weight = {cls: (class_priority or {}).get(cls.value, 0) for cls in SloClass}
    weighed = len(set(weight.values())) > 1  # else creation order, the queue's own
    position = {p.request.job_id: i for i, p in enumerate(pods)}

    def order(pod: TimedPod) -> tuple[int, int]:
        return -weight[pod.request.slo_class], position[pod.request.job_id]

    occ = scheduler.occupancy
    timeline = Timeline(capacity=occ.capacity)
    by_id = {p.request.job_id: p for p in pods}
    horizon = pods[-1].created if pods else 0
    ends: list[tuple[int, int, str]] = []  # (end, rank, job id)
    withdrawals: list[tuple[int, int, str]] = []  # (deletion, index, job id) of tasks that may give up
    queue: dict[str, TimedPod] = {}  # waiting, in priority order
    nxt = done = 0
    while (now := _next_time(pods, nxt, ends, withdrawals)) is not None:
        whole = bool(ends) and ends[0][0] <= now  # something ended: room freed
        while ends and ends[0][0] <= now:
            end, rank, job_id = heapq.heappop(ends)
            if not occ.runs(rank, job_id, end):
                continue  # taken off by a preemption
            if end <= horizon:
                req = by_id[job_id].request
                work = timeline.work_done.get(req.slo_class.value, 0.0)
                timeline.work_done[req.slo_class.value] = work + gpu_request(req) * (end - occ.begun[job_id])
            occ.finish(rank, job_id)
            done += 1
        arrived = []
        while nxt < len(pods) and pods[nxt].created <= now:
            pod = pods[nxt]
            queue[pod.request.job_id] = pod
            arrived.append(pod)
            if pod.runtime is None:
                heapq.heappush(withdrawals, (pod.deleted, nxt, pod.request.job_id))
            nxt += 1
        while withdrawals and withdrawals[0][0] <= now:
            _, _, job_id = heapq.heappop(withdrawals)
            if (pod := queue.pop(job_id, None)) is not None:
                timeline.withdrawn.append(pod)
                whole = True  # the queue ahead of the others changed
        arrived = [p for p in arrived if p.request.job_id in queue]
        if weighed and arrived and not whole:  # one that outranks a waiting task goes before it
            new = {p.request.job_id for p in arrived}
            last = max((order(p) for job_id, p in queue.items() if job_id not in new), default=None)
            whole = last is not None and min(map(order, arrived)) < last
        pending = list(queue.values()) if whole else arrived  # the queue holds creation order
        tasks = sorted(pending, key=order) if weighed else pending
        if tasks:
            outcome = scheduler.decide(tasks, now, whole)
            for start in outcome.started:
                end = end_of(start.pod, now + start.delay)
                job_id = start.pod.request.job_id
                del queue[job_id]
                heapq.heappush(ends, (end, start.rank, job_id))
                timeline.waits[job_id] = now + start.delay - start.pod.created
            for job_id in outcome.preempted:  # queued again, in creation order
                queue[job_id] = by_id[job_id]
                queue = dict(sorted(queue.items(), key=lambda item: position[item[0]]))
            timeline.preempted += len(outcome.preempted)
            timeline.work_lost += outcome.work_lost
            for pod in outcome.refused:
                del queue[pod.request.job_id]
                timeline.refused.append(pod)
        timeline.times.append(now)
        timeline.allocated.append(occ.allocated)
        if progress is not None:
            progress(nxt + done)
    timeline.stuck = list(queue.values())
    return timeline
