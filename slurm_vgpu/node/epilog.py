"""Epilog: release the job's placement, remove its slice file, and stop the user's MPS server on
that GPU once their last job there has ended (or lower its caps to the jobs that remain).

The placement released is the one the job's slice file names, not whatever placement holds the
job's id: a slurmctld that lost its state gives ids out again, and the epilog of one job must not
release another's slice. A job with no slice file here had no slice set up by this node's prolog;
the placement daemon ends whatever placement it had once Slurm reports the job ended."""
from __future__ import annotations

import logging
from collections.abc import Mapping

from ..config import Config
from ..mps import GpuMps
from . import slice as slices
from . import store

log = logging.getLogger("slurm-vgpu.epilog")


def run(config: Config, env: Mapping[str, str], node: str) -> int:
    job_id = int(env["SLURM_JOB_ID"])
    placement_id = slices.placement_of(config.slice_dir, job_id)
    slices.remove(config.slice_dir, job_id)
    if placement_id is None:
        return 0
    with store.connect(config.database_url) as conn:
        placements = store.active_placements(conn, job_id)
        if not placements or placements[0].id != placement_id:
            return 0
        placement = placements[0]
        store.mark_released(conn, *placements)  # a whole-GPU job's every GPU; the file names the first
        if placement.whole:
            message = f"released the whole GPU{'s' if len(placements) > 1 else ''} " + \
                ",".join(p.gpu_uuid for p in placements)
        else:
            remaining = GpuMps.of(config, placement.gpu_uuid, node).job_ended(conn, placement.uid)
            message = f"released {placement.share}% of {placement.gpu_uuid}" + (
                "" if remaining else f"; uid {placement.uid}'s server stopped")
        store.record_event(conn, "slice-released", message, job_id, placement.gpu_uuid, node)
        log.info("job %d: %s", job_id, message)
    return 0
