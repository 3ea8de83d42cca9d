"""Prolog: give a placed job its slice before any of its tasks starts.

Reads the job's placement, makes sure the GPU is exclusive to MPS and its control daemon runs,
starts the job user's server and caps it, marks the placement running and writes the slice file. A job without a
placement is left alone: a plain job, which Slurm's device cgroup keeps off every GPU (gres.conf
declares them all with File=), so it cannot reach one without a slice either. A whole-GPU job gets
its GPU from Slurm (gres/gpu: the device file, CUDA_VISIBLE_DEVICES): the prolog only makes sure
no MPS daemon holds the GPU and its mode is DEFAULT, and writes a slice file that sets nothing and
names the placement for the epilog.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from ..config import Config
from ..mps import GpuMps
from . import slice as slices
from . import store

log = logging.getLogger("slurm-vgpu.prolog")

# How long the prolog waits for Postgres before it fails the job's start (Slurm's PrologEpilogTimeout
# and MessageTimeout must leave room for it).
DATABASE_WAIT = 10.0


def run(config: Config, env: Mapping[str, str], node: str) -> int:
    job_id, uid = int(env["SLURM_JOB_ID"]), int(env["SLURM_JOB_UID"])
    restarted = int(env.get("SLURM_JOB_RESTART_COUNT") or 0) > 0
    slices.remove(config.slice_dir, job_id)  # never a file left by an earlier job of this id
    with store.connect_retrying(config.database_url, DATABASE_WAIT) as conn:
        placement = store.active_placement(conn, job_id)
        if placement is None:
            log.info("job %d has no vgpu placement: nothing to set up", job_id)
            return 0
        refusal = _refusal(placement, uid, node, restarted)
        if refusal:
            log.error("job %d: %s; it gets no slice", job_id, refusal)
            store.record_event(conn, "prolog-refused", refusal, job_id, placement.gpu_uuid, node)
            return 0
        gpu = GpuMps.of(config, placement.gpu_uuid, node)
        with gpu.handed_over_whole(conn) if placement.whole else gpu.serving(conn, uid, placement.id):
            if not store.mark_running(conn, placement):
                log.error("job %d: its placement ended while the prolog ran; it gets no slice", job_id)
                return 0
        if placement.whole:
            text = slices.render_whole(job_id, placement.id)
        else:
            text = slices.render(
                slices.Slice(job_id, placement.gpu_uuid, placement.gpu_minor, placement.share,
                             placement.memory_mib, gpu.control.pipe_dir, gpu.control.log_dir, placement.id),
                store.node_gpu_minors(conn, node),
                slices.char_major("nvidia-uvm"),
            )
        path = slices.write(config.slice_dir, job_id, text)
        what = "the whole GPU" if placement.whole else f"slice {placement.share}% of"
        message = f"{what} {placement.gpu_uuid} for uid {uid} ({path})"
        store.record_event(conn, "slice-started", message, job_id, placement.gpu_uuid, node)
        log.info("job %d: %s", job_id, message)
    return 0


def _refusal(placement: store.JobPlacement, uid: int, node: str, restarted: bool) -> str | None:
    if placement.node != node:
        return f"placed on {placement.node}'s GPU {placement.gpu_uuid} but started on {node}"
    if placement.uid != uid:
        return f"placement is for uid {placement.uid}, job runs as uid {uid}"
    if placement.state == "running" and not restarted:
        # A first start of a job whose placement already ran: an earlier job of the same id (a
        # slurmctld that lost its state gives ids out again); the placement reconciles it away.
        return "its placement already ran for an earlier job of this id"
    return None
