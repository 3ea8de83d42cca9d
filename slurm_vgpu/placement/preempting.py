"""Preemption in the placement cycle: a latency job that waits for room has best-effort slices
requeued for it (``PreemptBestEffort=yes``, where slurm.conf's PreemptMode includes REQUEUE).

The victims (chosen by :func:`slurm_vgpu.policy.preemption.choose_victims`) get SIGTERM, as Slurm's
own preemption sends at its GraceTime, and are told why in their AdminComment. After
``PreemptGraceTime`` seconds, or as soon as none of them runs any more, their placements end and the
latency job's placement is written in the same transaction, under the capacity guard, so no other
job takes the room; then Slurm requeues them, held back to the placement, which places them again
later like any waiting job. What is under way lives in the daemon: a new leader chooses again.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ..adapters.slurm import Job, Slurm, SlurmError
from ..config import Config
from ..db import store
from ..db.engine import session_scope
from ..db.models import Placement
from ..policy import Blocked, Decision, GpuState, NodeState, PolicyConfig, Request, SloClass
from ..policy.preemption import MOST_PER_CYCLE, Preemption, Tenant, choose_victims
from ..policy.units import reference_speed
from .rows import placement_rows

log = logging.getLogger("slurm_vgpu.placement")


@dataclass(frozen=True)
class Underway:
    """Victims signalled for one latency job, requeued at ``deadline`` (monotonic seconds)."""

    preemption: Preemption
    deadline: float


@dataclass
class Preemptions:
    """The preemptions under way, by the latency job's id, kept from cycle to cycle."""

    underway: dict[int, Underway] = field(default_factory=dict)
    allowed: bool | None = None  # Slurm's PreemptMode includes REQUEUE (asked once)

    def slurm_allows(self, slurm: Slurm) -> bool:
        if self.allowed is None:
            mode = slurm.preempt_mode()
            self.allowed = "REQUEUE" in mode.upper().split(",")
            if not self.allowed:
                log.error("PreemptBestEffort=yes, but slurm.conf's PreemptMode is %s: no slice is preempted "
                          "until it includes REQUEUE (PreemptMode=REQUEUE) and the daemon restarts", mode)
        return self.allowed


def tenants(placements: Sequence[Placement], jobs: Mapping[int, Job], now: datetime,
            spared: set[int] = frozenset()) -> dict[str, list[Tenant]]:
    """Each GPU's running slices, as preemption weighs them (a job Slurm does not show running is
    no victim: it is ending or already requeued; nor is one ``spared``, already another's victim)."""
    by_gpu: dict[str, list[Tenant]] = {}
    for p in placements:
        job = jobs.get(p.job_id)
        if p.state != "running" or p.whole:
            continue
        running = job is not None and job.state == "RUNNING"
        by_gpu.setdefault(p.gpu_uuid, []).append(Tenant(
            job_id=str(p.job_id), share=p.share, user=p.uid, slo_class=SloClass(p.slo_class),
            memory_mib=p.memory_mib, run_s=max(0.0, (now - (p.started_at or now)).total_seconds()),
            requeueable=running and job.requeue and p.job_id not in spared, cpu_milli=1000 * (p.cpus or 1),
            node_memory_mib=p.node_memory_mib or 0))
    return by_gpu


def preempt(engine, slurm: Slurm, config: Config, policy: PolicyConfig, preemptions: Preemptions, jobs: Mapping[int, Job],
            requests: Sequence[Request], blocked: list[Blocked], gpus: Sequence[GpuState],
            nodes: Sequence[NodeState]) -> None:
    """Advance the preemptions under way and start new ones for the latency ``requests`` that this
    cycle left ``blocked`` (whose reasons then say what is being done for them)."""
    waiting = {int(b.job_id) for b in blocked if not b.never}
    for job_id in [j for j in preemptions.underway if j not in waiting]:
        log.info("job %d no longer waits; its preemption of %s is dropped", job_id,
                 preemptions.underway[job_id].preemption.victims)
        del preemptions.underway[job_id]
    latency = [r for r in requests if r.slo_class is SloClass.LATENCY and int(r.job_id) in waiting]
    if not latency or not preemptions.slurm_allows(slurm):
        return
    now = store.now()
    spared = {int(v) for u in preemptions.underway.values() for v in u.preemption.victims}
    with session_scope(engine) as session:
        on_gpus = tenants(store.active_placements(session), jobs, now, spared)
    by_id = {int(r.job_id): r for r in latency}
    busy = {u.preemption.gpu_uuid for u in preemptions.underway.values()}  # this cycle's view is old there
    for job_id, underway in list(preemptions.underway.items()):
        victims = [jobs.get(int(v)) for v in underway.preemption.victims]
        if time.monotonic() >= underway.deadline or not any(v is not None and v.state == "RUNNING" for v in victims):
            del preemptions.underway[job_id]
            request = by_id.pop(job_id, None)  # placed in their room, it chooses no more
            if request is not None:
                _requeue(engine, slurm, jobs, underway.preemption, request)
    free_gpus = [g for g in gpus if g.uuid not in busy]
    ref = reference_speed(gpus, policy)
    by_node = {n.name: n for n in nodes}
    reasons: dict[str, str] = {}
    for request in [r for r in latency if int(r.job_id) in by_id][:MOST_PER_CYCLE]:
        job_id = int(request.job_id)
        if job_id in preemptions.underway:
            reasons[request.job_id] = _reason(preemptions.underway[job_id].preemption, config)
            continue
        chosen = choose_victims(request, free_gpus, on_gpus, policy, ref, by_node)
        if chosen is None:
            continue
        _signal(engine, slurm, jobs, chosen, config)
        preemptions.underway[job_id] = Underway(chosen, time.monotonic() + config.preempt_grace_time)
        free_gpus = [g for g in free_gpus if g.uuid != chosen.gpu_uuid]
        reasons[request.job_id] = _reason(chosen, config)
    blocked[:] = [replace(b, reason=reasons.get(b.job_id, b.reason)) for b in blocked]


def _reason(chosen: Preemption, config: Config) -> str:
    return (f"requeueing best-effort job(s) {', '.join(chosen.victims)} on {chosen.node} to make room for it "
            f"(they have {config.preempt_grace_time:g}s from SIGTERM to end)")


def _signal(engine, slurm: Slurm, jobs: Mapping[int, Job], chosen: Preemption, config: Config) -> None:
    """SIGTERM to each victim, and its AdminComment says why."""
    why = (f"preempted by latency job {chosen.job_id}: requeued {config.preempt_grace_time:g}s after SIGTERM, "
           "placed again later")
    log.info("job %s: SIGTERM to best-effort job(s) %s on %s, requeued in %gs (work lost %.0f share-seconds)",
             chosen.job_id, ", ".join(chosen.victims), chosen.node, config.preempt_grace_time, chosen.work_lost)
    for victim in chosen.victims:
        job = jobs[int(victim)]
        try:
            slurm.set_comment(job, replace(job.request, wait=why))
            slurm.signal(job, "TERM")
        except SlurmError as exc:
            log.warning("job %s: could not signal it for its preemption: %s", victim, exc)
    with session_scope(engine) as session:
        store.log_event(session, "preempting", f"job {chosen.job_id}: best-effort job(s) {', '.join(chosen.victims)} "
                        f"signalled on {chosen.node}", job_id=int(chosen.job_id), gpu_uuid=chosen.gpu_uuid,
                        node=chosen.node, details={"victims": list(chosen.victims), "work_lost": chosen.work_lost})


def _requeue(engine, slurm: Slurm, jobs: Mapping[int, Job], chosen: Preemption, request: Request) -> None:
    """End the victims' placements and write the latency job's in their room, in one transaction;
    then requeue the victims in Slurm. The latency job is pinned by the next cycle."""
    why = f"preempted by latency job {chosen.job_id} on {chosen.node}"
    job = jobs[int(chosen.job_id)]
    victims = {int(v) for v in chosen.victims}
    with session_scope(engine) as session:
        for placement in store.active_placements(session):
            if placement.job_id in victims:
                store.end_placement(session, placement, "released", why)
        session.flush()
        row = placement_rows([Decision(chosen.job_id, chosen.node, (chosen.gpu_uuid,), chosen.share)],
                             {chosen.job_id: request}, {job.job_id: job.submit_time})
        if not store.insert_placements(session, row):
            session.rollback()
            log.warning("job %s: the capacity guard refused its place after the preemption; it is chosen again",
                        chosen.job_id)
            return
        store.log_event(session, "preempted", f"job {chosen.job_id} placed in the room of {', '.join(chosen.victims)}",
                        job_id=job.job_id, gpu_uuid=chosen.gpu_uuid, node=chosen.node)
    log.info("job %s: placed in the room of %s on %s; requeueing them", chosen.job_id, ", ".join(chosen.victims),
             chosen.node)
    for victim in victims:
        if victim in jobs:
            try:
                slurm.send_back(jobs[victim], jobs[victim].request, why)
            except SlurmError as exc:
                log.warning("job %d: could not requeue it for its preemption: %s", victim, exc)
