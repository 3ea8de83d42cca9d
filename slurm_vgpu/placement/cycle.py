"""One placement cycle: reconcile Postgres with Slurm, place waiting jobs, pin them.

Order matters for crash safety: decisions are committed to Postgres (where the capacity guard makes
oversubscription impossible) *before* Slurm is told; a crash after the commit leaves placements in
state ``placed`` that the next cycle pins again. Pinning is idempotent.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..adapters.slurm import UNPLACED, Job, Slurm, SlurmError
from ..config import Config
from ..db import store
from ..db.engine import session_scope
from ..db.writer import PlacementWriter, placement_writer
from ..db.models import Placement
from ..policy import Blocked, Decision, PolicyConfig, Request, SloClass
from ..policy.placement import Placer

log = logging.getLogger("slurm_vgpu.placement")

WORKLOAD_WINDOW = 1000  # recent placements that make up the typical requests

ENDED = {
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE",
}


@dataclass
class CycleReport:
    placed: list[int] = field(default_factory=list)
    pinned: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    cancelled: dict[int, str] = field(default_factory=dict)
    released: list[int] = field(default_factory=list)
    unpinned: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Pin:
    job_id: int
    placement_id: int
    gres_type: str
    node: str
    share: int
    gpu_uuid: str


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


def build_placer(gpus: list, config: PolicyConfig, workload: list[Request]) -> Placer:
    """A placer scored for its typical requests, its objects moved out of the garbage collector's
    sight: they live until the next rebuild, and a full collection walking the millions of cached
    scores stalled a cycle for 50 ms. Frozen objects are still freed by reference counting (the
    placer's structures hold no reference cycles); what an earlier freeze kept is handed back to
    the collector first."""
    gc.unfreeze()
    placer = Placer(gpus, config, workload=[(r, 1.0) for r in workload])
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

    def for_cycle(self, session, requests: list[Request]) -> Placer:
        gpus = store.gpu_states(session, self.config.heartbeat_timeout)
        stale = time.monotonic() - self.built_at > self.config.workload_refresh
        if self.placer is None or stale or (requests and not self.placer.typical):
            self.placer = None  # the old one is freed before the new one is built
            self.placer = build_placer(gpus, policy_config(self.config), typical_workload(session, requests))
            self.built_at = time.monotonic()
        else:
            self.placer.sync(gpus)
        return self.placer


def waiting_requests(jobs: list[Job], placed_jobs: set[int], now_s: float) -> list[Request]:
    """Held, unplaced vgpu jobs as policy requests, oldest first.

    Held jobs all have priority 0, so Slurm's priority cannot order them; submit order (FIFO) does,
    and the policy's anti-starvation keeps a large request from waiting forever.
    """
    waiting = [
        j for j in jobs
        if j.state == "PENDING" and j.request.state == UNPLACED and j.job_id not in placed_jobs
    ]
    waiting.sort(key=lambda j: (j.submit_time, j.job_id))
    return [
        Request(
            job_id=str(j.job_id),
            share=j.request.share,
            user=j.user_id,
            slo_class=SloClass(j.request.slo_class),
            memory_mib=j.request.memory_mib,
            models=frozenset({j.request.model}) if j.request.model else frozenset(),
            waited_s=max(0.0, now_s - j.submit_time),
        )
        for j in waiting
    ]


def placement_rows(decisions: Sequence[Decision], by_id: Mapping[str, Request]) -> list[dict]:
    """The placements rows of a cycle's decisions (state ``placed``: not yet pinned in Slurm), given
    their requests by job id."""
    return [_placement_row(d, by_id[d.job_id]) for d in decisions]


def _placement_row(d: Decision, req: Request) -> dict:
    return dict(job_id=int(d.job_id), gpu_uuid=d.gpu_uuids[0], uid=req.user, share=d.share,
                requested_share=req.share, memory_mib=req.memory_mib, slo_class=req.slo_class.value,
                state="placed")


def commit_as_decided(writer: PlacementWriter, outcomes: Iterator[Decision | Blocked],
                      requests: Sequence[Request], most: int, blocked: list[Blocked]) -> Iterator[list[dict]]:
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
        writer.send(placement_rows(decided, by_id))
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


def run_cycle(engine: sa.Engine, slurm: Slurm, config: Config, may_cancel: bool = True,
              kept: KeptPlacer | None = None) -> CycleReport:
    """``may_cancel`` is False until the agents have had time to register: a request that looks
    impossible against a half-registered inventory is told it waits, not cancelled. ``kept`` is
    the daemon's placer (a fresh one when not given)."""
    kept = kept or KeptPlacer(config)
    report = CycleReport()
    jobs = {j.job_id: j for j in slurm.vgpu_jobs()}
    now = store.now()
    with session_scope(engine) as session:
        repin, unpin, placed_jobs = _reconcile(session, jobs, now, config, report)
        requests = waiting_requests(list(jobs.values()), placed_jobs, now.timestamp())
        placer = kept.for_cycle(session, requests)
    blocked: list[Blocked] = []
    with placement_writer(engine) as writer:
        new = [row for rows in commit_as_decided(writer, placer.decide(requests), requests, config.place_batch,
                                                 blocked) for row in rows]
    with session_scope(engine) as session:
        gpus = store.gpus_by_uuid(session, {p["gpu_uuid"] for p in new} | {p.gpu_uuid for p in repin})
        pins = [
            Pin(job_id, placement_id, gpus[gpu].gres_type, gpus[gpu].node, share, gpu)
            for job_id, placement_id, gpu, share in [
                *((p["job_id"], p["id"], p["gpu_uuid"], p["share"]) for p in new),
                *((p.job_id, p.id, p.gpu_uuid, p.share) for p in repin),
            ]
        ]
        report.placed = [p["job_id"] for p in new]
    for job_id in unpin:
        _unpin(slurm, jobs[job_id], report)
    for pin in pins:
        _pin(engine, slurm, jobs[pin.job_id], pin, report)
    for waiting in blocked:
        never = waiting.never and may_cancel
        _tell_waiting(engine, slurm, jobs[int(waiting.job_id)], waiting.reason, never, report)
    return report


def _reconcile(session, jobs: dict[int, Job], now: datetime, config: Config, report: CycleReport):
    """Bring placements in line with what Slurm says at ``now``; returns the placements to pin
    again, the jobs to unpin, and every job that had an active placement (the ones it ended
    included: their jobs have ended, or are pinned in Slurm until unpinned, so none of them is
    waiting to be placed)."""
    repin, unpin = [], []
    placed_jobs = set()
    for placement in store.active_placements(session):
        job = jobs.get(placement.job_id)
        placed_jobs.add(placement.job_id)
        if job is None or job.state in ENDED:
            store.end_placement(session, placement, "released", f"job {job.state.lower() if job else 'gone'}")
            report.released.append(placement.job_id)
        elif job.state == "RUNNING" and placement.state != "running":
            placement.state = "running"
            placement.started_at = placement.started_at or now
        elif job.state == "PENDING" and placement.state == "placed":
            repin.append(placement)
        elif job.state == "PENDING" and placement.state == "running":
            placement.state, placement.pinned_at = "pinned", now  # requeued by Slurm onto the same GPU
        elif (
            job.state == "PENDING" and placement.state == "pinned"
            and placement.pinned_at < now - timedelta(seconds=config.pin_timeout)
        ):
            store.end_placement(
                session, placement, "failed",
                f"pinned for {config.pin_timeout:.0f}s without starting; placing it again",
            )
            unpin.append(placement.job_id)
    for job in jobs.values():
        if job.state == "PENDING" and job.request.state == "pinned" and job.job_id not in placed_jobs:
            unpin.append(job.job_id)  # Slurm has a pin that Postgres no longer backs
    return repin, unpin, placed_jobs


def _pin(engine: sa.Engine, slurm: Slurm, job: Job, pin: Pin, report: CycleReport) -> None:
    request = replace(job.request, state="pinned", gpu=pin.gpu_uuid, wait=None)
    try:
        slurm.pin(pin.job_id, pin.gres_type, pin.share, pin.node, request)
    except SlurmError as exc:
        log.warning("job %d: pinning to %s failed: %s", pin.job_id, pin.gres_type, exc)
        with session_scope(engine) as session:
            placement = session.get(Placement, pin.placement_id)
            if placement.state in ("placed", "pinned"):
                store.end_placement(session, placement, "failed", f"Slurm refused the pin: {exc}")
        return
    with session_scope(engine) as session:
        placement = session.get(Placement, pin.placement_id)
        if placement.state == "placed":
            placement.state, placement.pinned_at = "pinned", store.now()
        store.log_event(session, "pinned", f"job {pin.job_id} -> {pin.node} {pin.gres_type} ({pin.share}%)",
                        job_id=pin.job_id, gpu_uuid=pin.gpu_uuid, node=pin.node)
    report.pinned.append(pin.job_id)


def _unpin(slurm: Slurm, job: Job, report: CycleReport) -> None:
    try:
        slurm.hold(job.job_id, replace(job.request, state=UNPLACED, gpu=None, wait="placing again"))
        report.unpinned.append(job.job_id)
    except SlurmError as exc:
        log.warning("job %d: could not take its pin back: %s", job.job_id, exc)


def _tell_waiting(engine, slurm: Slurm, job: Job, reason: str, never: bool, report: CycleReport) -> None:
    """Say why a job waits (in its AdminComment), once per change; end it if it can never run."""
    try:
        if never:
            slurm.cancel(job.job_id, replace(job.request, state="failed", wait=reason))
            report.cancelled[job.job_id] = reason
            with session_scope(engine) as session:
                store.log_event(session, "cancelled", reason, job_id=job.job_id)
        elif job.request.wait != reason.replace('"', "'"):  # as it reads back from AdminComment
            slurm.set_comment(job.job_id, replace(job.request, wait=reason))
            report.waiting[job.job_id] = reason
    except SlurmError as exc:
        log.warning("job %d: could not record why it waits: %s", job.job_id, exc)

