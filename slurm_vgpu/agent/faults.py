"""A GPU that can no longer serve its slices: a fatal fault its MPS server logged, or NVML reporting
it lost. Its slices cannot continue (a fatal fault hits every client of the GPU, and NVIDIA advises
restarting the server), so the agent drains the GPU and hands each job back to the placement
(requeued and held, the reason in its AdminComment), then ends its placement as failed.

Detection reads the log files MPS writes in the GPU's log directory (``control.log``,
``server.log``); a handled log is renamed ``<name>.fault-<unix time>``, so each fault is acted on
once, also across agent restarts, and the evidence stays for the admin.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import sqlalchemy as sa

from ..adapters.slurm import Slurm, SlurmError
from ..contract import UNPLACED, VgpuRequest
from ..db import store
from ..db.engine import session_scope
from ..db.models import ACTIVE_STATES, Gpu, Placement

log = logging.getLogger("slurm_vgpu.agent")

SERVER_LOG = "server.log"
# A line a server wrote about itself: ``[date time Server PID] ... fatal ...``. control.log is not
# read: it echoes the commands sent to the daemon (``User did send ...``), text that is not MPS's.
_FATAL = re.compile(r"^\[[^\]]* Server \d+\] .*\bfatal\b", re.IGNORECASE)


def fatal_line(text: str) -> str | None:
    """The first line in which a server reports a fatal fault."""
    return next((line.strip() for line in text.splitlines() if _FATAL.search(line.strip())), None)


def logged_fault(log_dir: Path) -> tuple[Path, str] | None:
    """(log file, line) of a fault not yet handled in a GPU's MPS log directory."""
    try:
        line = fatal_line((log_dir / SERVER_LOG).read_text(errors="replace"))
    except FileNotFoundError:
        return None
    return (log_dir / SERVER_LOG, line) if line else None


def set_aside(path: Path) -> Path:
    target = path.with_name(f"{path.name}.fault-{int(time.time())}")
    path.rename(target)
    return target


def fail_gpu(engine: sa.Engine, slurm: Slurm, node: str, gpu_uuid: str, reason: str) -> list[int]:
    """Drain the GPU (a ``down`` GPU stays down) and move each active slice off it: the job is sent
    back to the placement, then its placement ends as failed. Returns the jobs still on the GPU
    because Slurm refused (their placements stay active, so the next call tries them again)."""
    with session_scope(engine) as session:
        gpu = session.get(Gpu, gpu_uuid, with_for_update=True)
        if gpu.state == "up":
            gpu.state, gpu.state_reason = "draining", reason
            store.log_event(session, "gpu-fault", reason, gpu_uuid=gpu_uuid, node=node)
        label = f"{node} GPU {gpu.index}"
        slices = list(session.scalars(
            sa.select(Placement).where(Placement.gpu_uuid == gpu_uuid, Placement.state.in_(ACTIVE_STATES))
        ))
    if not slices:
        return []
    why = f"{label} failed: {reason}"
    jobs = {j.job_id: j for j in slurm.jobs()}
    refused = []
    for placement in slices:
        job = jobs.get(placement.job_id)
        fallback = VgpuRequest(UNPLACED, placement.requested_share, placement.slo_class, placement.memory_mib)
        try:
            moved = job is not None and slurm.send_back(job, fallback, why)
        except SlurmError as exc:
            log.error("job %d: could not requeue it off %s: %s", placement.job_id, label, exc)
            _record(engine, placement, None, "requeue-failed", f"{why}; Slurm refused the requeue: {exc}", node)
            refused.append(placement.job_id)
            continue
        _record(engine, placement, why, "job-requeued" if moved else "job-ended", f"requeued: {why}" if moved
                else f"{why}; the job had already ended", node)
    return refused


def _record(engine: sa.Engine, placement: Placement, failure: str | None, kind: str, message: str, node: str) -> None:
    """An event for the job, and its placement ended as failed when ``failure`` says why."""
    with session_scope(engine) as session:
        if failure is not None:
            row = session.get(Placement, placement.id, with_for_update=True)
            if row.state in ACTIVE_STATES:
                store.end_placement(session, row, "failed", failure)
        store.log_event(session, kind, message, job_id=placement.job_id, gpu_uuid=placement.gpu_uuid, node=node)
