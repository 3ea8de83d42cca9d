"""What a node hook could not finish, finished by the agent once it can be.

- A prolog that failed because the database did not answer (:mod:`slurm_vgpu.node.failed`):
  Slurm requeued its job held and drained the node. Once the database answers, the job is released
  and the node resumed, if Slurm still holds it drained for the prolog (``Prolog error``); a node
  drained for any other reason, or by an admin since, stays drained.
- An epilog that could not reach the database: the job's slice file is gone, but its user's MPS
  server may still run with the job's caps. A server whose user has no active slice on the GPU is
  stopped.
- A running placement whose job left nothing on the node (Slurm lost it, and no epilog released
  it) is released.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..adapters import mps
from ..adapters.slurm import Slurm, SlurmError
from ..config import Config
from ..node import failed
from ..node import store as node_store
from ..node.locking import gpu_lock
from . import procs

log = logging.getLogger("slurm_vgpu.agent")

PROLOG_DRAIN = "Prolog error"  # the reason slurmctld gives a node whose prolog failed


def failed_prologs(config: Config, slurm: Slurm, node: str) -> list[int]:
    """Release the jobs of this node's failed prologs and resume the node Slurm drained for them;
    returns the jobs handled. Called once the database answers again."""
    failures = failed.pending(config)
    if not failures:
        return []
    for job_id, reason in sorted(failures.items()):
        try:
            slurm.release(job_id)
        except SlurmError as exc:  # ended or cancelled meanwhile: nothing to release
            log.info("job %d: not released after its failed prolog (%s): %s", job_id, reason, exc)
        failed.clear(config, job_id)
    state, why = slurm.node_reason(node)
    if state.startswith("drain") and why == PROLOG_DRAIN:
        slurm.resume(node)
        log.warning("resumed %s, drained when its prolog could not reach the database", node)
    return sorted(failures)


def idle_servers(config: Config, gpu_uuid: str) -> list[int]:
    """Stop the MPS servers on a GPU whose users have no active slice there; returns their uids.
    The slices are read under the GPU's lock, which a prolog holds from starting a server until
    its placement runs, so a server just started for a new job is never taken for idle."""
    control = mps.control_for(config, gpu_uuid)
    if control.daemon_pid() is None:
        return []
    with gpu_lock(config, gpu_uuid):
        servers = control.servers()
        if not servers:
            return []
        with node_store.connect(config.database_url) as conn:
            active = node_store.active_uids(conn, gpu_uuid)
        idle = {uid: pid for uid, pid in servers.items() if uid not in active}
        for pid in idle.values():
            control.shutdown_server(pid)
    return sorted(idle)


LOST_AFTER = 60  # seconds a running placement must have run before it can be taken for lost


def lost_jobs(config: Config, node: str, proc: Path = Path("/proc")) -> list[int]:
    """Release the running placements of this node whose job left nothing here: no slice file (the
    epilog removes it) and no process in the job's cgroup. The placement daemon leaves such a
    placement alone when Slurm no longer knows its job (its processes may still run here: Slurm
    lost the job, not the node); once nothing of it is left, its GPU share is free again."""
    with node_store.connect(config.database_url) as conn:
        running = node_store.running_on(conn, node, LOST_AFTER)
        if not running:
            return []
        alive = jobs_with_processes(node, proc)
        lost = [p for p in running if p.job_id not in alive and not (config.slice_dir / str(p.job_id)).exists()]
        for placement in lost:
            node_store.mark_released(conn, placement)
            node_store.record_event(conn, "slice-released", "released by the agent: the job left no process and "
                                    "no slice file on the node", placement.job_id, placement.gpu_uuid, node)
    return [p.job_id for p in lost]


def jobs_with_processes(node: str, proc: Path = Path("/proc")) -> set[int]:
    """The jobs of this node that have a process in their cgroup."""
    jobs = set()
    for entry in proc.iterdir():
        cgroup = procs.job_cgroup_of(int(entry.name), node, proc) if entry.name.isdigit() else None
        if cgroup is not None and cgroup.job_id is not None:
            jobs.add(cgroup.job_id)
    return jobs
