"""The placements rows a cycle's decisions write: one per GPU, in state ``placed`` (not yet pinned
in Slurm), shared by the cycle's group commit and by preemption, which writes its latency job's
row in the room its victims leave."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..policy import Decision, Request


def placement_rows(decisions: Sequence[Decision], by_id: Mapping[str, Request],
                   submit_times: Mapping[int, int] = {}) -> list[dict]:
    """The placements rows of a cycle's decisions (state ``placed``: not yet pinned in Slurm), given
    their requests by job id and their jobs' submit times (which, with the id, name a job): one row
    per GPU, so a job of several whole GPUs has several."""
    return [_placement_row(d, gpu, by_id[d.job_id], submit_times) for d in decisions for gpu in d.gpu_uuids]


def _placement_row(d: Decision, gpu: str, req: Request, submit_times: Mapping[int, int]) -> dict:
    return dict(job_id=int(d.job_id), job_submit_time=submit_times.get(int(d.job_id), 0), gpu_uuid=gpu,
                uid=req.user, share=d.share, requested_share=req.share, memory_mib=req.memory_mib,
                whole=req.whole, gpus=len(d.gpu_uuids), slo_class=req.slo_class.value, state="placed",
                cpus=max(1, req.cpu_milli // 1000), node_memory_mib=req.node_memory_mib or None)
