"""A placement daemon killed between pinning a job in Slurm and writing so in Postgres: the next
daemon's cycle must see that Slurm already holds the pin and not pin again, or it races the job's
start (Slurm refuses to update a job that is no longer pending, and a refused pin fails the
placement of a job that runs). Slurm here is a stand-in that answers one job and records what the
cycle asks of it; the database is a real Postgres."""
from __future__ import annotations

import gc
from dataclasses import replace

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

    def reservations(self):
        return []

    def __getattr__(self, name):  # a job is recorded by its ref, as Slurm's commands name it
        return lambda *args, **kwargs: self.calls.append((name, tuple(a.ref if isinstance(a, Job) else a for a in args)))


def job_pinned_by_slurm(pin_reached: bool) -> Job:
    request = VgpuRequest("pinned", 30, "throughput", gpu="GPU-1") if pin_reached else \
        VgpuRequest("unplaced", 30, "throughput")
    return Job(job_id=7, user_id=1000, user_name="u", state="PENDING", priority=1, submit_time=100, nodes="",
               tres_per_node="gres:vgpu:a100_1:30" if pin_reached else "gres:vgpu:30", request=request,
               partition="debug")


def placed(engine, **values) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(Placement).values(
            job_id=7, job_submit_time=100, gpu_uuid="GPU-1", uid=1000, share=30, requested_share=30,
            slo_class="throughput", **{"state": "placed", **values}))


def state_of_7(engine) -> str:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT state FROM placements WHERE job_id = 7"))


def one_cycle(engine, job: Job, **placement) -> RecordingSlurm:
    """A GPU, job 7's placement on it as a killed daemon left it (placed, unless ``placement``
    says otherwise), and one cycle."""
    add_gpu(engine)
    placed(engine, **placement)
    slurm = RecordingSlurm([job])
    try:
        run_cycle(engine, slurm, Config())
    finally:
        gc.unfreeze()  # a placer build freezes the process's objects, as it does in the daemon
    return slurm


def test_a_pin_that_reached_slurm_is_written_down_not_sent_again(clean_db):
    slurm = one_cycle(clean_db, job_pinned_by_slurm(pin_reached=True))
    assert [name for name, _ in slurm.calls if name == "pin"] == []
    assert state_of_7(clean_db) == "pinned"


def test_a_pin_that_did_not_reach_slurm_is_sent_again(clean_db):
    slurm = one_cycle(clean_db, job_pinned_by_slurm(pin_reached=False))
    assert [args[:4] for name, args in slurm.calls if name == "pin"] == [(7, ("a100_1",), 30, "node1")]
    assert state_of_7(clean_db) == "pinned"


def test_a_pinned_job_slurm_holds_gives_its_gpu_back(clean_db):
    """A failed prolog's job is requeued held (priority 0): pinned, it would keep its GPU share
    while Slurm will not start it."""
    job = replace(job_pinned_by_slurm(pin_reached=True), priority=0, reason="launch_failed_requeued_held")
    slurm = one_cycle(clean_db, job)
    assert state_of_7(clean_db) == "failed"
    assert [name for name, args in slurm.calls if args and args[0] == 7] == ["hold"]


def test_a_pin_slurm_holds_as_never_runnable_counts_as_refused_on_that_node(clean_db):
    """Slurm holds a job it finds never runnable where it is pinned (priority 0, BadConstraints; seen
    for a job slurmctld recovered from older state after a crash and requeued). Placed again at
    once, the job was pinned to the same GPU every cycle; its node now counts as having refused it."""
    job = replace(job_pinned_by_slurm(pin_reached=True), priority=0, reason="BadConstraints")
    one_cycle(clean_db, job)
    with clean_db.connect() as conn:
        state, reason = conn.execute(sa.text("SELECT state, reason FROM placements WHERE job_id = 7")).one()
    assert state == "failed" and reason.startswith("Slurm refused the pin on node1")
    released = replace(job, priority=1, reason="", request=VgpuRequest("unplaced", 30, "throughput"),
                       tres_per_node="gres:vgpu:30")
    slurm = RecordingSlurm([released])
    try:
        run_cycle(clean_db, slurm, Config())
    finally:
        gc.unfreeze()
    assert [name for name, _ in slurm.calls if name == "pin"] == []  # node1 is left out for it a while
    assert any("refused its pin on every node" in str(args) for name, args in slurm.calls if name == "set_comment")


def test_a_pin_slurm_holds_for_a_qos_limit_stays_past_pin_timeout_and_another_reason_does_not(clean_db):
    """Slurm sees a vgpu job's units only once it is pinned, so a QoS limit on gres/vgpu
    (``MaxTRESPerUser=gres/vgpu=100``) holds the pin; it starts there once the limit allows, and
    placing it again would only pin it again, every PinTimeout."""
    long_ago = sa.text("now() - interval '1 hour'")
    held = replace(job_pinned_by_slurm(pin_reached=True), reason="QOSMaxGRESPerUser")
    slurm = one_cycle(clean_db, held, state="pinned", pinned_at=long_ago)
    assert state_of_7(clean_db) == "pinned" and [name for name, _ in slurm.calls if name in ("pin", "unpin")] == []
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE events, placements, gpus, nodes RESTART IDENTITY CASCADE"))
    waiting = replace(job_pinned_by_slurm(pin_reached=True), reason="Resources")
    one_cycle(clean_db, waiting, state="pinned", pinned_at=long_ago)
    with clean_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM placements WHERE job_id = 7 AND state = 'failed'")) == 1
