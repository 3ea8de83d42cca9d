"""Prolog: give a placed job its slice before any of its tasks starts.

Reads the job's placement, makes sure the GPU is exclusive to MPS and its control daemon runs,
starts the job user's server and caps it, marks the placement running and writes the slice file. A job without a
placement is left alone: a plain job, which Slurm's device cgroup keeps off every GPU (gres.conf
declares them all with File=), so it cannot reach one without a slice either. A whole-GPU job gets
its GPUs from Slurm (gres/gpu: the device files, CUDA_VISIBLE_DEVICES): the prolog only makes sure
no MPS daemon holds them and their mode is DEFAULT, and writes a slice file that sets nothing and
names the job's first placement for the epilog.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import ExitStack

from ..config import Config
from ..mps import GpuMps
from . import slice as slices
from . import store

log = logging.getLogger("slurm-vgpu.prolog")

# How long the prolog waits for Postgres before it fails the job's start: one that does not answer,
# and one that answers it has no connection slot left (a burst of prologs holds them; each frees
# its own within seconds). Slurm's PrologEpilogTimeout and BatchStartTimeout must leave room for it.
DATABASE_WAIT = 10.0
DATABASE_FULL_WAIT = 60.0


def run(config: Config, env: Mapping[str, str], node: str) -> int:
    job_id, uid = int(env["SLURM_JOB_ID"]), int(env["SLURM_JOB_UID"])
    restarted = int(env.get("SLURM_JOB_RESTART_COUNT") or 0) > 0
    slices.remove(config.slice_dir, job_id)  # never a file left by an earlier job of this id
    with store.connect_retrying(config.database_url, DATABASE_WAIT, DATABASE_FULL_WAIT) as conn:
        placements = store.active_placements(conn, job_id)
        if not placements:
            log.info("job %d has no vgpu placement: nothing to set up", job_id)
            return 0
        placement = placements[0]
        refusal = next(filter(None, (_refusal(p, uid, node, restarted) for p in placements)), None)
        if refusal:
            log.error("job %d: %s; it gets no slice", job_id, refusal)
            store.record_event(conn, "prolog-refused", refusal, job_id, placement.gpu_uuid, node)
            return 0
        if placement.whole:
            text = _hand_over_whole(config, conn, placements, node)
        else:
            text = _start_slice(config, conn, placement, uid, node)
        if text is None:
            log.error("job %d: its placement ended while the prolog ran; it gets no slice", job_id)
            return 0
        path = slices.write(config.slice_dir, job_id, text)
        gpus = ",".join(p.gpu_uuid for p in placements)
        what = "the whole GPU" if placement.whole else f"slice {placement.share}% of"
        message = f"{what}{'s' if len(placements) > 1 else ''} {gpus} for uid {uid} ({path})"
        store.record_event(conn, "slice-started", message, job_id, placement.gpu_uuid, node)
        log.info("job %d: %s", job_id, message)
    return 0


def _start_slice(config: Config, conn, placement: store.JobPlacement, uid: int, node: str) -> str | None:
    """The user's MPS server on the slice's GPU, capped; the slice file's text (None: the placement
    ended meanwhile)."""
    gpu = GpuMps.of(config, placement.gpu_uuid, node)
    with gpu.serving(conn, uid, placement.id):
        if not store.mark_running(conn, placement):
            return None
    return slices.render(
        slices.Slice(placement.job_id, placement.gpu_uuid, placement.gpu_minor, placement.share,
                     placement.memory_mib, gpu.control.pipe_dir, gpu.control.log_dir, placement.id),
        store.node_gpu_minors(conn, node),
        slices.char_major("nvidia-uvm"),
    )


def _hand_over_whole(config: Config, conn, placements: list[store.JobPlacement], node: str) -> str | None:
    """Each whole GPU with no MPS daemon on it, in its DEFAULT mode; the slice file's text, which
    names the job's first placement (None: a placement ended meanwhile)."""
    with ExitStack() as handed_over:
        for placement in placements:
            handed_over.enter_context(GpuMps.of(config, placement.gpu_uuid, node).handed_over_whole(conn))
        if not store.mark_running(conn, *placements):
            return None
    return slices.render_whole(placements[0].job_id, placements[0].id)


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
