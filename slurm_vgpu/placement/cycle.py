"""One placement cycle: reconcile Postgres with Slurm, place waiting jobs, pin them.

Order matters for crash safety: decisions are committed to Postgres (where the capacity guard makes
oversubscription impossible) *before* Slurm is told; a crash after the commit leaves placements in
state ``placed`` that the next cycle pins again. Pinning is idempotent.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa

from ..adapters.reservations import Reservation, closed_nodes, confined_to, names as reservation_names
from ..adapters.slurm import ENDED_STATES, Job, Node, Slurm, SlurmError, pinned_gres
from ..config import Config
from ..contract import FAILED, PINNED, UNPLACED
from ..db import store
from ..db.engine import session_scope
from ..db.writer import PlacementWriter, placement_writer
from ..db.models import Gpu, Placement
from ..db.profiles import stored_points
from ..policy import Blocked, Decision, GpuState, NodeState, PolicyConfig, Request, SloClass
from ..policy.placement import Placer
from .preempting import Preemptions, preempt
from .rows import placement_rows
from .targets import sized
from .wait_notes import WaitNotes

log = logging.getLogger("slurm_vgpu.placement")

WORKLOAD_WINDOW = 1000  # recent placements that make up the typical requests

ENDED = ENDED_STATES
# sinfo's compact node states (``%t``) in which a node takes new jobs; any other (drain, drng,
# down, fail, ...) or a flag such as ``*`` (not responding) keeps slices off its GPUs. ``plnd`` is
# an idle node the backfill scheduler plans a job on (22.05 shows it so for as long as a job waits
# for a reservation ahead); ``resv`` and ``maint`` take the jobs of their reservation (each job's
# nodes are weighed by :mod:`..adapters.reservations`).
USABLE_NODE_STATES = {"idle", "mix", "alloc", "comp", "plnd", "resv", "maint"}
# The one flag that does not: ``-``, planned, which the backfill scheduler sets on a node it holds
# resources of for a pending job; the node goes on taking the jobs that fit beside them (a burst of
# vgpu jobs, CPUs of some waiting, showed every node ``mix-`` and left every slice waiting).
PLANNED = "-"
REFUSAL_MEMORY = timedelta(minutes=10)  # how long a node that refused a job's pin is left out for it
# A job Slurm requeued and every GPU node then refused: Slurm 22.05 keeps a requeued job's first pin
# in its GRES request, and holds it never runnable on any other GPU (docs/slurm-behaviour.md).
REQUEUED_REFUSED = ("since Slurm requeued it, every GPU node refuses its pin (Slurm holds it never runnable); "
                    "submit it again")
NEVER_RUNNABLE = "BadConstraints"  # the reason of a job Slurm holds as never runnable where it is pinned
ARRAY_SPLIT = 32  # at most this many tasks of one array are split off per cycle
# States in which a task counts against its array's %N throttle (Slurm's own count of running tasks).
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "SUSPENDED"})


@dataclass
class CycleReport:
    placed: list[int] = field(default_factory=list)
    pinned: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    cancelled: dict[int, str] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)
    unpinned: list[int] = field(default_factory=list)
    split: list[str] = field(default_factory=list)  # array tasks split off to be placed, "<array>_<task>"
    requeue: dict[int, str] = field(default_factory=dict)  # running jobs to hand back, and why


@dataclass(frozen=True)
class Pin:
    """One job's pin: its placements' GPUs (several for a job of several whole GPUs), on one node."""

    job_id: int
    placement_ids: tuple[int, ...]
    gres_types: tuple[str, ...]
    node: str
    share: int
    gpu_uuids: tuple[str, ...]


def pins(placed: Iterable[tuple[int, int, str, int]], gpus_by_uuid: Mapping[str, Gpu]) -> list[Pin]:
    """The pins of placements given as (job id, placement id, GPU uuid, share), one per job, in
    the order of each job's first placement; ``gpus_by_uuid`` gives each GPU's gres type and node."""
    by_job: dict[int, list[tuple[int, str, int]]] = {}
    for job_id, placement_id, gpu, share in placed:
        by_job.setdefault(job_id, []).append((placement_id, gpu, share))
    return [
        Pin(job_id, tuple(p for p, _, _ in rows), tuple(gpus_by_uuid[g].gres_type for _, g, _ in rows),
            gpus_by_uuid[rows[0][1]].node, rows[0][2], tuple(g for _, g, _ in rows))
        for job_id, rows in by_job.items()
    ]


def policy_config(config: Config) -> PolicyConfig:
    return PolicyConfig(
        policy=config.policy,
        multi_user=config.multi_user,
        latency_max_cotenants=config.latency_max_cotenants,
        reference_model=config.reference_model,
        starvation_wait_s=config.starvation_wait,
    )


def typical_workload(session, requests: list[Request]) -> list[Request]:
    """What a placer measures fragmentation against: the last WORKLOAD_WINDOW placements and the
    requests waiting now (the daemon at each rebuild, ``explain`` for its verdict)."""
    return [*store.recent_requests(session, WORKLOAD_WINDOW), *requests]


def build_placer(gpus: list, config: PolicyConfig, workload: list[Request], nodes: Sequence[NodeState] = ()) -> Placer:
    """A placer scored for its typical requests, its objects moved out of the garbage collector's
    sight: they live until the next rebuild, and a full collection walking the millions of cached
    scores stalled a cycle for 50 ms. Frozen objects are still freed by reference counting (the
    placer's structures hold no reference cycles); what an earlier freeze kept is handed back to
    the collector first."""
    gc.unfreeze()
    placer = Placer(gpus, config, nodes, workload=[(r, 1.0) for r in workload])
    placer.prepare()
    gc.collect()
    gc.freeze()
    return placer


@contextmanager
def collector_paused():
    """No garbage collection inside a cycle, one collection after it, while the daemon is idle.
    Collections that fell inside decisions were most of the placer's slowest batches
    (bench/placement, docs/architecture.md)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


class KeptPlacer:
    """The daemon's :class:`Placer`, kept from cycle to cycle and handed each cycle's inventory.

    Its typical requests (what fragmentation is measured against) are the last WORKLOAD_WINDOW
    placements plus the requests waiting when it was built; it is rebuilt on them every
    ``WorkloadRefresh`` seconds, or as soon as requests arrive at a placer built on none.
    """

    def __init__(self, config: Config):
        self.config = config
        self.placer: Placer | None = None
        self.built_at = 0.0

    def for_cycle(self, session, requests: list[Request], gpus: list[GpuState] | None = None,
                  nodes: Sequence[NodeState] = ()) -> Placer:
        """The placer for this cycle's ``requests``, synced to ``gpus`` (default: the inventory)
        and to the CPUs and memory of ``nodes`` (none given: not constrained)."""
        if gpus is None:
            gpus = cycle_gpus(session, self.config, {})
        stale = time.monotonic() - self.built_at > self.config.workload_refresh
        if self.placer is None or stale or (requests and not self.placer.typical):
            self.placer = None  # the old one is freed before the new one is built
            self.placer = build_placer(gpus, policy_config(self.config), typical_workload(session, requests), nodes)
            self.built_at = time.monotonic()
        else:
            self.placer.sync(gpus, nodes)
        return self.placer


def unusable_nodes(nodes: Mapping[str, Node]) -> dict[str, str]:
    """Node -> why Slurm would start no job there (``sinfo``'s state), for the nodes it would not."""
    return {name: f"Slurm reports node {name} {node.state}" for name, node in nodes.items()
            if node.state.removesuffix(PLANNED) not in USABLE_NODE_STATES}


def cycle_gpus(session, config: Config, unusable: Mapping[str, str]) -> list[GpuState]:
    """Every GPU as the policy takes it this cycle: the inventory, with the GPUs of nodes Slurm
    would start nothing on unavailable (a pin there would only wait out PinTimeout)."""
    return [
        replace(g, available=False, unavailable_reason=unusable[g.node]) if g.available and g.node in unusable else g
        for g in store.gpu_states(session, config.heartbeat_timeout)
    ]


def waiting_on_slurm(jobs: Iterable[Job], placed_jobs: set[int], now_s: float,
                     reservations: Sequence[Reservation] = ()) -> list[Blocked]:
    """The unplaced vgpu jobs that Slurm keeps pending until someone or something acts (held, a
    dependency, --begin, a reservation to come: :meth:`Job.kept_back`), each with why: it becomes
    the job's reason, since the placement leaves them alone (a held job stays held, after a failed
    prolog or a slurmctld restart too, until someone releases it)."""
    return [Blocked(str(j.job_id), why) for j in jobs
            if j.state == "PENDING" and j.request.state == UNPLACED and j.job_id not in placed_jobs
            and not j.holds_array_tasks and (why := j.kept_back(now_s, reservations)) is not None]


class Waiting(NamedTuple):
    """The jobs to place, as policy requests in order, and those no GPU node is open to now."""

    requests: list[Request]
    shut_out: list[Blocked]  # with why: Slurm would start them on none of the GPU nodes


def waiting_requests(jobs: list[Job], placed_jobs: set[int], now_s: float,
                     refused: Mapping[int, set[str]] = {}, nodes: Mapping[str, Node] | None = None,
                     gpu_nodes: Iterable[str] = (), class_priority: Mapping[str, int] = {},
                     reservations: Sequence[Reservation] = ()) -> Waiting:
    """Unplaced vgpu jobs that only their placement keeps from starting, as policy requests, in
    Slurm's priority order, each raised by its class's weight (``class_priority``: the site's
    ClassPriority), then oldest first.

    A job Slurm itself would not start yet (held, its dependency unmet, its --begin ahead) is left
    out: a pin would hold a GPU no job uses. So is the record of an array's tasks not yet split
    off (each task is placed as its own job: :func:`array_splits`), and a task beyond its array's
    ``%N`` throttle (Slurm would keep it pending, pinned), and every job of a user whose pinned job
    Slurm holds back for a QoS or association limit (pinned, it would wait as well). A job may use
    the nodes of ``gpu_nodes`` that Slurm would run it on now (its partitions, --constraint,
    --exclude, --nodelist, by ``nodes``; Slurm's ``reservations``) and that did not refuse its pin
    lately (``refused``). A job whose partitions, constraints or reservations leave it none of the
    GPU nodes is shut out, with that reason, rather than asked of the policy, which knows only
    that the job may use no node; so is, for good, a job Slurm requeued that every GPU node refused.
    """
    at_limit = {j.user_id for j in jobs if j.held_by_limit}
    waiting = [
        j for j in jobs
        if j.state == "PENDING" and j.request.state == UNPLACED and j.job_id not in placed_jobs
        and not j.holds_array_tasks and j.waits_on_slurm(now_s, reservations) is None and j.user_id not in at_limit
    ]
    waiting.sort(key=lambda j: (-(j.priority + class_priority.get(j.request.slo_class, 0)), j.submit_time,
                                j.array_task_id or 0, j.job_id))
    waiting = _within_throttles(waiting, jobs, placed_jobs)
    every = frozenset(gpu_nodes)

    def allowed(job: Job) -> tuple[frozenset[str] | None, str | None]:
        """The GPU nodes the job may use now (None: every one), or why Slurm would start it on none."""
        left = every if nodes is None else every & job.allowed_nodes(nodes)
        if every and not left:
            return left, (f"Slurm would start it on none of the GPU nodes: its partition "
                          f"({job.partition or 'the default'}), --constraint, --exclude and --nodelist leave none")
        own = reservation_names(job.reservation)
        left -= closed_nodes(own, job.time_limit_min, reservations, now_s)
        if every and not left:
            return left, ("every GPU node it may use is in an advance reservation it is not part of, or one "
                          "that starts before its time limit ends (scontrol show reservation)")
        confined = confined_to(own, reservations, now_s)
        if confined is not None:
            left &= confined
            if every and not left:
                return left, f"its reservation {job.reservation} holds none of the GPU nodes it may use"
        left -= refused.get(job.job_id, set())  # all refused: the policy says so
        if every and not left and job.restarts:
            return left, REQUEUED_REFUSED
        return (None if left == every else left), None

    where = {j.job_id: allowed(j) for j in waiting}
    shut_out = [Blocked(str(j.job_id), why, never=why == REQUEUED_REFUSED)
                for j in waiting if (why := where[j.job_id][1]) is not None]
    return Waiting([
        Request(
            job_id=str(j.job_id),
            share=j.request.share,
            user=j.user_id,
            slo_class=SloClass(j.request.slo_class),
            memory_mib=j.request.memory_mib,
            models=frozenset({j.request.model}) if j.request.model else frozenset(),
            gpus=j.request.gpus or 1,
            whole=j.request.gpus is not None,
            cpu_milli=1000 * j.cpus,
            node_memory_mib=j.memory_mib or 0,
            waited_s=max(0.0, now_s - j.submit_time),
            nodes=where[j.job_id][0],
        )
        for j in waiting if where[j.job_id][1] is None
    ], shut_out)


def node_states(nodes: Mapping[str, Node], gpu_nodes: Iterable[str], jobs: Mapping[int, Job],
                pinned: Iterable[tuple[int, str]]) -> list[NodeState]:
    """The CPUs and memory of each node of ``gpu_nodes`` as the policy takes them: what Slurm
    shows idle (sinfo), less what the jobs pinned there and not started yet will take (``pinned``:
    job id, node), which Slurm counts only once they start. A placement is then made only where its job's CPUs and
    memory are idle, as in the simulator, and the placer weighs how a node's CPUs strand its GPUs."""
    with_gpus = frozenset(gpu_nodes)
    taken: dict[str, list[int]] = {}
    for job_id, node in pinned:
        job = jobs.get(job_id)
        if job is not None and job.state == "PENDING":
            cpus, memory = taken.setdefault(node, [0, 0])
            taken[node] = [cpus + job.cpus, memory + (job.memory_mib or 0)]
    return [NodeState(name,
                      None if node.cpus_idle is None else 1000 * max(0, node.cpus_idle - taken.get(name, (0, 0))[0]),
                      None if node.memory_free_mib is None else max(0, node.memory_free_mib - taken.get(name, (0, 0))[1]))
            for name, node in nodes.items() if name in with_gpus]


def _array_tasks(jobs: Iterable[Job]) -> dict[int, list[Job]]:
    """Array id -> the tasks Slurm shows as their own records (running, pinned, split off)."""
    tasks: dict[int, list[Job]] = {}
    for j in jobs:
        if j.array_job_id and not j.holds_array_tasks:
            tasks.setdefault(j.array_job_id, []).append(j)
    return tasks


def _holds_a_slot(task: Job, placed_jobs: set[int]) -> bool:
    """Whether a task counts against its array's throttle: it runs, or it is pinned or placed
    (Slurm would start it as soon as its throttle lets it)."""
    return task.state in RUNNING_STATES or (
        task.state == "PENDING" and (task.request.state == PINNED or task.job_id in placed_jobs))


def _within_throttles(waiting: list[Job], jobs: list[Job], placed_jobs: set[int]) -> list[Job]:
    """``waiting`` less the tasks of arrays whose ``%N`` throttle is reached (by order)."""
    if not any(j.array_max_tasks for j in waiting):
        return waiting
    tasks = _array_tasks(jobs)
    room: dict[int, int] = {}
    kept = []
    for j in waiting:
        if j.array_max_tasks:
            if j.array_job_id not in room:
                room[j.array_job_id] = j.array_max_tasks - sum(_holds_a_slot(t, placed_jobs)
                                                               for t in tasks.get(j.array_job_id, []))
            room[j.array_job_id] -= 1
            if room[j.array_job_id] < 0:
                continue
        kept.append(j)
    return kept


def array_splits(jobs: list[Job], placed_jobs: set[int], now_s: float, most: int = ARRAY_SPLIT
                 ) -> list[tuple[Job, int]]:
    """The array tasks to split off into jobs of their own now, as (array record, task id): each
    task is then placed, pinned and accounted as any job (its own job id, the array's submit
    time). Tasks are split in order, at most ``most`` per array per cycle, only while none of the
    array's split tasks still waits for a GPU (tasks of one array ask alike: when one waits, the
    next would too), and never beyond the array's ``%N`` throttle; none while Slurm itself would
    not start the array (held, a dependency, --begin)."""
    tasks = _array_tasks(jobs)
    splits = []
    for record in jobs:
        if not (record.holds_array_tasks and record.state == "PENDING" and record.request is not None
                and record.request.state == UNPLACED and record.waits_on_slurm(now_s) is None):
            continue
        split_off = [t for t in tasks.get(record.array_job_id, []) if t.state not in ENDED]
        if any(t.state == "PENDING" and t.request is not None and t.request.state == UNPLACED
               and t.job_id not in placed_jobs for t in split_off):
            continue
        room = most
        if record.array_max_tasks:
            room = min(room, record.array_max_tasks - sum(_holds_a_slot(t, placed_jobs) for t in split_off))
        pending = record.pending_tasks()
        count = min(room, len(pending))
        if count == len(pending):
            count -= 1  # the last one becomes the record itself, a job like any other
        splits += [(record, task) for task in pending[:max(count, 0)]]
    return splits


def commit_as_decided(writer: PlacementWriter, outcomes: Iterator[Decision | Blocked],
                      requests: Sequence[Request], most: int, blocked: list[Blocked],
                      submit_times: Mapping[int, int] = {}) -> Iterator[list[dict]]:
    """Write the decisions of ``outcomes`` (a placer's :meth:`~Placer.decide` of ``requests``) as
    they are made, and yield each write's placements rows, with their ``id``, once it has
    committed. Requests that wait are added to ``blocked``.

    Group commit: while one write is in flight the placer goes on deciding, and when the write lands
    everything decided since goes in the next one, so a write's cost overlaps the deciding and a
    decision waits for at most the write before its own. At most ``most`` decisions wait: deciding
    pauses for the write in flight when that many do. A write the capacity guard refuses (a GPU
    drained or filled by another writer since the cycle read the inventory) writes nothing and ends
    the cycle's placing: its jobs and the later ones wait for the next cycle, whose inventory read
    corrects the placer.
    """
    by_id = {r.job_id: r for r in requests}
    decided: list[Decision] = []

    def send() -> None:
        writer.send(placement_rows(decided, by_id, submit_times))
        decided.clear()

    try:
        for outcome in outcomes:
            if isinstance(outcome, Blocked):
                blocked.append(outcome)
                continue
            decided.append(outcome)
            if writer.busy:
                landed = writer.wait() if len(decided) >= most else writer.poll()
                if landed is not None:
                    yield landed
            if not writer.busy:
                send()
        if writer.busy:
            yield writer.wait()
        if decided:
            send()
            yield writer.wait()
    except sa.exc.IntegrityError as exc:
        log.warning("the capacity guard refused jobs %s; they wait for the next cycle: %s",
                    [row["job_id"] for row in exc.params], str(exc.orig).splitlines()[0])
    finally:
        outcomes.close()


def sized_by_target(session, requests: list[Request], jobs: Mapping[int, Job], gpus: list[GpuState],
                    config: Config) -> tuple[list[Request], list[Blocked]]:
    """Jobs of a latency target get the share and GPU model their workload's profile says meets
    it (:mod:`.targets`); the profiles are read only when such a job waits."""
    asked = {str(j.job_id): j.request for j in jobs.values() if j.request.profile is not None}
    if not asked or not any(r.job_id in asked for r in requests):
        return requests, []
    points = [point for point, _ in stored_points(session, sorted({r.profile for r in asked.values()}))]
    return sized(requests, asked, points, gpus, policy_config(config))


def run_cycle(engine: sa.Engine, slurm: Slurm, config: Config, may_cancel: bool = True,
              kept: KeptPlacer | None = None, notes: WaitNotes | None = None,
              preemptions: Preemptions | None = None) -> CycleReport:
    """``may_cancel`` is False until the agents have had time to register: a request that looks
    impossible against a half-registered inventory is told it waits, not cancelled. ``kept`` is
    the daemon's placer, ``notes`` when it last wrote each wait reason and ``preemptions`` those
    under way (fresh ones when not given)."""
    kept = kept or KeptPlacer(config)
    notes = notes if notes is not None else WaitNotes()
    preemptions = preemptions if preemptions is not None else Preemptions()
    report = CycleReport()
    jobs = {j.job_id: j for j in slurm.vgpu_jobs()}
    notes.keep_only(jobs)
    nodes = slurm.nodes()
    unusable = unusable_nodes(nodes)
    reservations = slurm.reservations()
    now = store.now()
    with session_scope(engine) as session:
        repin, unpin, placed_jobs, blocked_by = _reconcile(session, jobs, now, config, report)
        _repair_running(session, jobs, placed_jobs, report)
        gpus = cycle_gpus(session, config, unusable)
        refused = store.refused_nodes(session, {j.job_id: j.submit_time for j in jobs.values()}, now - REFUSAL_MEMORY)
        gpu_nodes = {g.node for g in gpus}
        requests, shut_out = waiting_requests(list(jobs.values()), placed_jobs, now.timestamp(), refused, nodes,
                                              gpu_nodes, config.class_priorities, reservations)
        requests, unmet = sized_by_target(session, requests, jobs, gpus, config)
        shut_out += unmet
        room = node_states(nodes, gpu_nodes, jobs, store.pinned_nodes(session))
        placer = kept.for_cycle(session, requests, gpus, room)
    blocked: list[Blocked] = [Blocked(str(job_id), reason) for job_id, reason in blocked_by.items()]
    blocked += waiting_on_slurm(jobs.values(), placed_jobs, now.timestamp(), reservations) + shut_out
    submit_times = {j.job_id: j.submit_time for j in jobs.values()}
    with placement_writer(engine) as writer:
        new = [row for rows in commit_as_decided(writer, placer.decide(requests), requests, config.place_batch,
                                                 blocked, submit_times) for row in rows]
    if config.preempt_best_effort:
        preempt(engine, slurm, config, policy_config(config), preemptions, jobs, requests, blocked, gpus, room)
    with session_scope(engine) as session:
        gpus_by_uuid = store.gpus_by_uuid(session, {p["gpu_uuid"] for p in new} | {p.gpu_uuid for p in repin})
        to_pin = pins([*((p["job_id"], p["id"], p["gpu_uuid"], p["share"]) for p in new),
                       *((p.job_id, p.id, p.gpu_uuid, p.share) for p in repin)], gpus_by_uuid)
        report.placed = list(dict.fromkeys(p["job_id"] for p in new))
    for job_id in dict.fromkeys(unpin):  # a job of several whole GPUs is named once per placement
        _unpin(slurm, jobs[job_id], report)
    for job_id, why in report.requeue.items():
        try:
            slurm.send_back(jobs[job_id], jobs[job_id].request, why)
        except SlurmError as exc:
            log.warning("job %d: could not requeue it (%s): %s", job_id, why, exc)
    for pin in to_pin:
        _pin(engine, slurm, jobs[pin.job_id], pin, report, notes)
    for waiting in blocked:
        never = waiting.never and may_cancel
        _tell_waiting(engine, slurm, jobs[int(waiting.job_id)], waiting.reason, never, report, notes)
    for record, task in array_splits(list(jobs.values()), placed_jobs | set(report.placed), now.timestamp()):
        try:
            slurm.split_task(record.array_job_id, task, record.request)
            report.split.append(f"{record.array_job_id}_{task}")
        except SlurmError as exc:
            log.warning("array %d: could not split off task %d to place it: %s", record.array_job_id, task, exc)
    return report


def _reconcile(session, jobs: dict[int, Job], now: datetime, config: Config, report: CycleReport):
    """Bring placements in line with what Slurm says at ``now``; returns the placements to pin
    again, the jobs to unpin, every job id that has an active placement (the ones it ended
    included: their jobs have ended, or are pinned in Slurm until unpinned, so none of them is
    waiting to be placed), and jobs that wait behind an earlier job's placement of their id.

    A placement names its job by id and submit time: a job Slurm shows under the same id with
    another submit time is another job (a slurmctld that lost its state gives ids out again). A
    placement whose job Slurm no longer knows is released unless it runs: its processes may still
    run on the node (Slurm lost the job, not the node), and the node's agent releases it once none
    is left there (:func:`slurm_vgpu.agent.heal.lost_jobs`)."""
    repin, unpin = [], []
    placed_jobs, blocked_by = set(), {}
    for placement in store.active_placements(session):
        job = jobs.get(placement.job_id)
        placed_jobs.add(placement.job_id)
        if job is not None and placement.job_submit_time and job.submit_time != placement.job_submit_time:
            if job.state == "PENDING" and job.request.state == UNPLACED:
                blocked_by[job.job_id] = (f"an earlier job {job.job_id} still holds a GPU slice under this id; "
                                          "it is placed once that one has ended")
            job = None
        if job is None and placement.state == "running":
            continue
        if job is None or job.state in ENDED:
            store.end_placement(session, placement, "released", f"job {job.state.lower() if job else 'gone'}")
            report.released.append(placement.job_id)
        elif job.state == "RUNNING" and placement.state == "placed":
            # pinned, and the daemon stopped before it wrote so; only the prolog marks a placement
            # running (Slurm says RUNNING while the prolog still runs)
            placement.state, placement.pinned_at = "pinned", now
        elif job.state == "PENDING" and placement.state in ("placed", "pinned") and job.priority == 0:
            # held since it was placed (a failed prolog's requeue, an admin hold): Slurm will not
            # start it, so it holds no GPU; it is placed again once released
            store.end_placement(session, placement, "failed", _held_reason(session, job, placement))
            unpin.append(placement.job_id)
        elif job.state == "PENDING" and placement.state == "placed" and _pin_reached_slurm(job, placement):
            # the daemon stopped between the pin and writing so; pinning again would race the
            # job's start (Slurm refuses an update of a job that is no longer pending)
            placement.state, placement.pinned_at = "pinned", now
        elif job.state == "PENDING" and placement.state == "placed":
            repin.append(placement)
        elif job.state == "PENDING" and placement.state == "running":
            placement.state, placement.pinned_at = "pinned", now  # requeued by Slurm onto the same GPU
        elif (
            job.state == "PENDING" and placement.state == "pinned"
            and placement.pinned_at < now - timedelta(seconds=config.pin_timeout)
            # held for a QoS or association limit, it starts on its pin once the limit allows;
            # placed again, it would only be pinned and held again
            and not job.held_by_limit
        ):
            store.end_placement(
                session, placement, "failed",
                f"pinned for {config.pin_timeout:.0f}s without starting; placing it again",
            )
            unpin.append(placement.job_id)
    for job in jobs.values():
        if job.state == "PENDING" and job.request.state == PINNED and job.job_id not in placed_jobs:
            unpin.append(job.job_id)  # Slurm has a pin that Postgres no longer backs
    return repin, unpin, placed_jobs, blocked_by


def _held_reason(session, job: Job, placement: Placement) -> str:
    """Why a placed job that Slurm holds lost its placement. Slurm holds a job it finds never
    runnable where it was pinned (``BadConstraints``, seen for a job that slurmctld recovered from
    older state after a crash and then requeued): that is a refused pin, so the node is left out for
    the job a while (:data:`REFUSAL_MEMORY`) instead of being pinned there again every cycle."""
    if job.reason == NEVER_RUNNABLE:
        node = store.node_of_gpu(session, placement.gpu_uuid)
        return f"{store.PIN_REFUSED} on {node}: Slurm holds the job as never runnable there ({NEVER_RUNNABLE})"
    return f"held by Slurm ({job.reason or 'priority 0'}) before it started; placed again once released"


def _pin_reached_slurm(job: Job, placement: Placement) -> bool:
    """Whether Slurm already holds this placement's pin (its GPU in the AdminComment, its share in
    the typed GRES): both are set by the one update of :meth:`Slurm.pin`."""
    return (job.request.state == PINNED and placement.gpu_uuid in (job.request.gpu or "").split(",")
            and any(share == placement.share for _, share in pinned_gres(job.tres_per_node)))


def _repair_running(session, jobs: dict[int, Job], placed_jobs: set[int], report: CycleReport) -> None:
    """A vgpu job Slurm runs on a GPU with no placement behind it (a database restored from an
    older copy, say): its placement is written again from what Slurm gave it, under the capacity
    guard; when the guard refuses (the GPU was given to others meanwhile), the job is requeued."""
    for job in jobs.values():
        if job.state != "RUNNING" or job.request.state != PINNED or job.job_id in placed_jobs:
            continue
        pinned = pinned_gres(job.tres_per_node)
        gpus = [store.gpu_by_type(session, job.nodes, gres_type) for gres_type, _ in pinned]
        rows = [] if None in gpus else [dict(
            job_id=job.job_id, job_submit_time=job.submit_time, gpu_uuid=gpu.uuid, uid=job.user_id, share=share,
            requested_share=job.request.share, memory_mib=job.request.memory_mib, whole=job.request.gpus is not None,
            gpus=len(pinned), slo_class=job.request.slo_class, state="running", started_at=store.now(), cpus=job.cpus,
            node_memory_mib=job.memory_mib)
            for gpu, (_, share) in zip(gpus, pinned)]
        if rows and store.insert_placements(session, rows):
            types = ",".join(gres_type for gres_type, _ in pinned)
            store.log_event(session, "placement-repaired", f"job {job.job_id} ran on {types} of {job.nodes} "
                            "with no placement; written again from Slurm", job_id=job.job_id, gpu_uuid=gpus[0].uuid)
            placed_jobs.add(job.job_id)
        else:
            report.requeue[job.job_id] = "it ran on a GPU with no placement behind it, and the GPU has no room for it"


def _pin(engine: sa.Engine, slurm: Slurm, job: Job, pin: Pin, report: CycleReport, notes: WaitNotes) -> None:
    """Pin the job in Slurm; a pin Slurm refuses ends the job's placements as failed with Slurm's
    words (the node is then left out for that job a while: :data:`REFUSAL_MEMORY`), and the job is told."""
    request = replace(job.request, state=PINNED, gpu=",".join(pin.gpu_uuids), wait=None)
    try:
        slurm.pin(job, pin.gres_types, pin.share, pin.node, request)
    except SlurmError as exc:
        why = f"{store.PIN_REFUSED} on {pin.node}: {str(exc).splitlines()[0]}"
        log.warning("job %d: %s", pin.job_id, why)
        with session_scope(engine) as session:
            for placement_id in pin.placement_ids:
                placement = session.get(Placement, placement_id)
                if placement.state in ("placed", "pinned"):
                    store.end_placement(session, placement, "failed", why)
        _tell_waiting(engine, slurm, job, why, False, report, notes)
        return
    with session_scope(engine) as session:
        for placement_id in pin.placement_ids:
            placement = session.get(Placement, placement_id)
            if placement.state == "placed":
                placement.state, placement.pinned_at = "pinned", store.now()
        store.log_event(session, "pinned", f"job {pin.job_id} -> {pin.node} {','.join(pin.gres_types)} ({pin.share}%)",
                        job_id=pin.job_id, gpu_uuid=pin.gpu_uuids[0], node=pin.node)
    report.pinned.append(pin.job_id)


def _unpin(slurm: Slurm, job: Job, report: CycleReport) -> None:
    try:
        slurm.hold(job, replace(job.request, state=UNPLACED, gpu=None, wait="placing again"))
        report.unpinned.append(job.job_id)
    except SlurmError as exc:
        log.warning("job %d: could not take its pin back: %s", job.job_id, exc)


def _tell_waiting(engine, slurm: Slurm, job: Job, reason: str, never: bool, report: CycleReport,
                  notes: WaitNotes) -> None:
    """Say why a job waits (in its AdminComment) when ``notes`` finds it due; end it if it can
    never run."""
    try:
        if never:
            slurm.cancel(job, replace(job.request, state=FAILED, wait=reason))
            report.cancelled[job.job_id] = reason
            with session_scope(engine) as session:
                store.log_event(session, "cancelled", reason, job_id=job.job_id)
        elif notes.due(job.job_id, job.request.wait, reason.replace('"', "'"), time.monotonic()):
            slurm.set_comment(job, replace(job.request, wait=reason))  # reads back with ' for "
            notes.written(job.job_id, time.monotonic())
            report.waiting[job.job_id] = reason
    except SlurmError as exc:
        log.warning("job %d: could not record why it waits: %s", job.job_id, exc)

