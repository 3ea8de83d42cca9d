"""What a node hook could not finish, finished by the agent once it can be.

- A prolog that failed because the database did not answer (:mod:`slurm_vgpu.node.failed`):
  Slurm requeued its job held and drained the node. Once the database answers, the job is released
  and the node resumed, if Slurm still holds it drained for the prolog (``Prolog error``); a node
  drained for any other reason, or by an admin since, stays drained.
- An epilog that could not reach the database: the job's slice file is gone, but its user's MPS
  server may still run with the job's caps. A server whose user has no active slice on the GPU is
  stopped.
- A running placement whose job has no process left on the node (Slurm lost it, or its epilog
  could not reach the database) is released, and its slice file removed.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

from ..adapters.slurm import Slurm, SlurmError, drained
from ..config import Config
from ..mps import GpuMps
from ..node import failed
from ..node import slice as slices
from ..node import store as node_store
from . import procs

log = logging.getLogger("slurm_vgpu.agent")

PROLOG_DRAIN = "Prolog error"  # the reason slurmctld gives a node whose prolog failed


# Seconds a healed record is kept: the drain of the prolog that wrote it reaches slurmctld only
# after the prolog exits (seconds later under a burst), and must still be undone.
SETTLE = 60


def failed_prologs(config: Config, slurm: Slurm, node: str, now: float | None = None) -> list[int]:
    """Release the jobs of this node's failed prologs and resume the node Slurm drained for them;
    returns the jobs released this round. Called once the database answers again.

    Slurm requeues a job held a moment after its prolog failed: a job not held yet keeps its record
    for the next round (released too early, it would be held after the release and stay so),
    unless Slurm has requeued it since without a hold (a launch it could not confirm under load is
    requeued so, seen on 22.05) or someone released it: its restart count is then higher than the
    prolog saw. A released job's record says so, and is dropped once a later round sees the job not
    held (so a hold that came after the release is released too) and the node resumed, and not
    before it is SETTLE seconds old: the prolog's drain may reach slurmctld after its record was
    healed (seen under a burst: the node stayed drained with no record left). Meanwhile the record
    says it is settling, and Slurm is not asked about its job again, only about the node. A
    slurmctld that does not answer (restarting) leaves the work for the next round, never undone."""
    now = time.time() if now is None else now
    released, done = [], []
    try:
        failures = failed.pending(config, node)
        for job_id, failure in sorted(failures.items()):
            if failure.reason == failed.SETTLING:
                done.append(job_id)
                continue
            hold = slurm.job_hold(job_id)
            if hold is not None and hold.held:
                slurm.release(job_id)
                failed.mark_released(config, node, job_id, failure.restarts)
                released.append(job_id)
            elif hold is None or failure.reason == failed.RELEASED:  # gone or ended, or released and still so
                done.append(job_id)
            elif hold.restarts > failure.restarts:  # requeued since, and not held
                done.append(job_id)
        if released or done:
            state, why = slurm.node_reason(node)
            if drained(state) and why == PROLOG_DRAIN:
                slurm.resume(node)
                log.warning("resumed %s, drained when its prolog could not reach the database", node)
    except SlurmError as exc:
        log.info("failed prologs on %s: Slurm did not answer, next round: %s", node, exc)
        return released
    for job_id in done:
        failure = failures[job_id]
        if now - failure.written >= SETTLE:
            failed.clear(config, node, job_id)
        elif failure.reason != failed.SETTLING:
            failed.mark_settling(config, node, job_id, failure.restarts)
    return released


def idle_servers(config: Config, gpu_uuid: str) -> list[int]:
    """Stop the MPS servers on a GPU whose users have no active slice there; returns their uids."""
    return GpuMps.of(config, gpu_uuid).stop_idle(partial(node_store.connect, config.database_url))


LOST_AFTER = 60  # seconds a running placement must have run before it can be taken for lost


def lost_jobs(config: Config, slurm: Slurm, node: str, job_of_sluid: procs.JobOfSluid,
              proc: Path = Path("/proc")) -> list[int]:
    """Do the epilog's work for the running placements of this node whose job has no process left
    here (none in the job's cgroup) and that Slurm does not run here either (an allocation may sit
    without a process, e.g. salloc before its first step): release the placement and remove the
    slice file that names it.

    The placement daemon leaves a running placement alone when Slurm no longer knows its job (its
    processes may still run here: Slurm lost the job, not the node). When such a job ends, slurmd
    runs no epilog for it (slurmctld, which orders the epilog, does not know it), and an epilog
    that could not reach the database released nothing; once nothing of the job is left, its GPU
    share is free again."""
    with node_store.connect(config.database_url) as conn:
        running = node_store.running_on(conn, node, LOST_AFTER)
        if not running:
            return []
        alive = jobs_with_processes(node, job_of_sluid, proc)
        quiet = [p for p in running if p.job_id not in alive]
        if not quiet:
            return []
        allocated = slurm.allocated_on(node)  # job id -> submit time

        def gone(p: node_store.JobPlacement) -> bool:  # unknown here, or another job of the same id
            submitted = allocated.get(p.job_id)
            return submitted is None or p.job_submit_time not in (0, submitted)

        lost = [p for p in quiet if gone(p)]
        for placement in lost:
            if slices.placement_of(config.slice_dir, placement.job_id) == placement.id:
                slices.remove(config.slice_dir, placement.job_id)
            node_store.mark_released(conn, placement)
            node_store.record_event(conn, "slice-released", "released by the agent: the job has no process left on "
                                    "the node and no epilog released it", placement.job_id, placement.gpu_uuid, node)
    return sorted({p.job_id for p in lost})  # a job of several whole GPUs once


def jobs_with_processes(node: str, job_of_sluid: procs.JobOfSluid, proc: Path = Path("/proc")) -> set[int]:
    """The jobs of this node that have a process in their cgroup."""
    jobs = set()
    for entry in proc.iterdir():
        cgroup = procs.job_cgroup_of(int(entry.name), node, job_of_sluid, proc) if entry.name.isdigit() else None
        if cgroup is not None and cgroup.job_id is not None:
            jobs.add(cgroup.job_id)
    return jobs
