"""One placement cycle against a real Postgres, with Slurm a stand-in that answers fixed jobs and
records what the cycle asks of it: a job of several whole GPUs gets a placement per GPU and one
pin, and a waiting job's reason is not rewritten for its figures alone every cycle."""
from __future__ import annotations

import gc

import sqlalchemy as sa

from slurm_vgpu.adapters.slurm import Job
from slurm_vgpu.config import Config
from slurm_vgpu.contract import parse_request
from slurm_vgpu.placement.cycle import run_cycle
from slurm_vgpu.placement.wait_notes import WaitNotes

from .test_cycle_restart import RecordingSlurm
from .test_schema import add_gpu, place


def waiting_job(job_id: int, comment: str) -> Job:
    return Job(job_id=job_id, user_id=1000, user_name="u", state="PENDING", priority=1, submit_time=100, nodes="",
               tres_per_node="", request=parse_request(comment), partition="debug")


def gpus(engine, *uuids: str) -> None:
    """GPUs of node1, whose agent has just reported."""
    for uuid in uuids:
        add_gpu(engine, uuid=uuid)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE nodes SET heartbeat_at = now()"))


def running_slice(engine, job_id: int, share: int, gpu: str) -> None:
    """Another job's slice, running (a running placement stays while its job's processes may)."""
    place(engine, job_id, share, gpu=gpu)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE placements SET state = 'running' WHERE job_id = :job"), {"job": job_id})


def cycle(engine, jobs: list[Job], notes: WaitNotes | None = None) -> RecordingSlurm:
    slurm = RecordingSlurm(jobs)
    try:
        run_cycle(engine, slurm, Config(), notes=notes)
    finally:
        gc.unfreeze()  # a placer build freezes the process's objects, as it does in the daemon
    return slurm


def test_a_job_of_two_whole_gpus_gets_two_placements_and_one_pin_beside_a_slice(clean_db):
    gpus(clean_db, "GPU-1", "GPU-2", "GPU-3")
    running_slice(clean_db, 6, 30, "GPU-2")
    slurm = cycle(clean_db, [waiting_job(7, "vgpu-state=unplaced share=100 class=throughput gpus=2")])
    with clean_db.connect() as conn:
        rows = conn.execute(sa.text("SELECT gpu_uuid, share, whole, state FROM placements WHERE job_id = 7 "
                                    "ORDER BY gpu_uuid")).all()
    assert [tuple(r) for r in rows] == [("GPU-1", 100, True, "pinned"), ("GPU-3", 100, True, "pinned")]
    ((job_id, gres_types, share, node, request),) = [args for name, args in slurm.calls if name == "pin"]
    assert (job_id, sorted(gres_types), share, node) == (7, ["a100_1", "a100_3"], 100, "node1")
    assert sorted(request.gpu.split(",")) == ["GPU-1", "GPU-3"] and request.state == "pinned"


def told(slurm: RecordingSlurm) -> list[str]:
    return [args[1].wait for name, args in slurm.calls if name == "set_comment"]


def test_a_waiting_jobs_reason_is_rewritten_when_its_words_change_not_for_its_figures_alone(clean_db):
    gpus(clean_db, "GPU-1")
    running_slice(clean_db, 6, 80, "GPU-1")
    notes = WaitNotes(every=3600)
    asks = "vgpu-state=unplaced share=30 class=throughput"
    (first,) = told(cycle(clean_db, [waiting_job(7, asks)], notes))
    assert first == "needs 30% of one GPU; the most free on any eligible GPU is 20%"
    shown = f'{asks} wait="{first}"'  # as Slurm gives it back
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE placements SET share = 90 WHERE job_id = 6"))
    assert told(cycle(clean_db, [waiting_job(7, shown)], notes)) == []  # 10% now: the figures alone moved
    assert told(cycle(clean_db, [waiting_job(7, shown)], WaitNotes(every=0))) == [
        "needs 30% of one GPU; the most free on any eligible GPU is 10%"]
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE gpus SET state = 'down'"))
    (drained,) = told(cycle(clean_db, [waiting_job(7, shown)], notes))
    assert drained.startswith("every GPU is drained or down")
