"""A placement daemon killed between pinning a job in Slurm and writing so in Postgres: the next
daemon's cycle must see that Slurm already holds the pin and not pin again, or it races the job's
start (Slurm refuses to update a job that is no longer pending, and a refused pin fails the
placement of a job that runs). Slurm here is a stand-in that answers one job and records what the
cycle asks of it; the database is a real Postgres."""
from __future__ import annotations

import gc

import sqlalchemy as sa

from slurm_vgpu.adapters.slurm import Job, Node
from slurm_vgpu.contract import VgpuRequest
from slurm_vgpu.config import Config
from slurm_vgpu.db import engine as db
from slurm_vgpu.db.models import Placement
from slurm_vgpu.placement.cycle import run_cycle

from .test_schema import add_gpu


class RecordingSlurm:
    """Answers ``vgpu_jobs``/``nodes`` with fixed jobs and records every update it is asked for."""

    def __init__(self, jobs: list[Job]):
        self._jobs, self.calls = jobs, []

    def vgpu_jobs(self):
        return self._jobs

    def nodes(self):
        return {"node1": Node("idle", frozenset({"debug"}))}

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args))


def job_pinned_by_slurm(pin_reached: bool) -> Job:
    request = VgpuRequest("pinned", 30, "throughput", gpu="GPU-1") if pin_reached else \
        VgpuRequest("unplaced", 30, "throughput")
    return Job(job_id=7, user_id=1000, user_name="u", state="PENDING", priority=1, submit_time=100, nodes="",
               tres_per_node="gres:vgpu:a100_1:30" if pin_reached else "gres:vgpu:30", request=request,
               partition="debug")


def placed(engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(Placement).values(
            job_id=7, job_submit_time=100, gpu_uuid="GPU-1", uid=1000, share=30, requested_share=30,
            slo_class="throughput", state="placed"))


def state_of_7(engine) -> str:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT state FROM placements WHERE job_id = 7"))


def test_a_pin_that_reached_slurm_is_written_down_not_sent_again(clean_db):
    add_gpu(clean_db)
    placed(clean_db)
    slurm = RecordingSlurm([job_pinned_by_slurm(pin_reached=True)])
    try:
        run_cycle(clean_db, slurm, Config())
    finally:
        gc.unfreeze()
    assert [name for name, _ in slurm.calls if name == "pin"] == []
    assert state_of_7(clean_db) == "pinned"


def test_a_pin_that_did_not_reach_slurm_is_sent_again(clean_db):
    add_gpu(clean_db)
    placed(clean_db)
    slurm = RecordingSlurm([job_pinned_by_slurm(pin_reached=False)])
    try:
        run_cycle(clean_db, slurm, Config())
    finally:
        gc.unfreeze()
    assert [args[:4] for name, args in slurm.calls if name == "pin"] == [(7, "a100_1", 30, "node1")]
    assert state_of_7(clean_db) == "pinned"
