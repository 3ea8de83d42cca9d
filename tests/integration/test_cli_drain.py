"""``drain`` and ``resume``: GPU state, events, the capacity guard, and ``--requeue`` through Slurm."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from slurm_vgpu.db.models import Event, Gpu, Placement

from .cli_support import cli, fake_slurm, gpu_uuid, insert_inventory, place, slurm_job  # noqa: F401


def gpu_state(cli, node: str, index: int) -> tuple[str, str | None]:
    with cli.engine.connect() as conn:
        row = conn.execute(sa.select(Gpu.state, Gpu.state_reason).where(Gpu.uuid == gpu_uuid(node, index))).one()
    return tuple(row)


def test_drained_gpu_is_refused_by_the_capacity_guard_and_resume_reopens_it(cli):
    insert_inventory(cli.engine)
    result = cli("drain", "gpu01:0", "--reason", "Xid 79: fell off the bus")
    assert result.exit_code == 0, result.output
    assert gpu_state(cli, "gpu01", 0) == ("draining", "Xid 79: fell off the bus")
    assert gpu_state(cli, "gpu01", 1) == ("up", None)
    with pytest.raises(sa.exc.IntegrityError, match="is draining: it takes no new slices"):
        place(cli.engine, 31, "gpu01", 0, state="placed")
    assert cli("resume", "gpu01:0").exit_code == 0
    assert gpu_state(cli, "gpu01", 0) == ("up", None)
    place(cli.engine, 31, "gpu01", 0, state="placed")
    with cli.engine.connect() as conn:
        kinds = conn.execute(sa.select(Event.kind, Event.node, Event.details["reason"].astext).order_by(Event.id)).all()
    assert kinds == [("gpu-drain", "gpu01", "Xid 79: fell off the bus"), ("gpu-resume", "gpu01", "resumed")]


@pytest.mark.parametrize(
    ("targets", "drained"),
    [
        (["gpu02"], [("gpu02", 0), ("gpu02", 1)]),  # a whole node
        (["gpu[01-02]:0"], [("gpu01", 0), ("gpu02", 0)]),  # index on a hostlist of nodes
        (["gpu02:t4_1"], [("gpu02", 1)]),  # the GPU's gres type
        ([gpu_uuid("gpu01", 1)], [("gpu01", 1)]),  # its UUID
        (["gpu01:1", "gpu02:a100_0"], [("gpu01", 1), ("gpu02", 0)]),  # several at once
    ],
)
def test_drain_targets(cli, targets, drained):
    insert_inventory(cli.engine)
    assert cli("drain", *targets, "--reason", "maintenance").exit_code == 0
    with cli.engine.connect() as conn:
        rows = conn.execute(sa.select(Gpu.node, Gpu.index).where(Gpu.state == "draining").order_by(Gpu.node, Gpu.index))
        assert [tuple(r) for r in rows] == drained


def test_drain_of_an_unknown_gpu_is_bad_input_and_changes_nothing(cli):
    insert_inventory(cli.engine)
    result = cli("drain", "gpu01:0", "gpu09:0", "--reason", "x")
    assert result.exit_code == 2
    assert "no GPU matches 'gpu09:0'" in result.stderr and "slurm-vgpu gpus" in result.stderr
    assert gpu_state(cli, "gpu01", 0) == ("up", None)
    assert cli("drain", "gpu01:0").exit_code == 2, "--reason is required, as for scontrol"


def test_drain_without_requeue_leaves_running_slices_alone(cli, fake_slurm):
    insert_inventory(cli.engine)
    place(cli.engine, 41, "gpu01", 0, share=30, state="running")
    result = cli("drain", "gpu01:0", "--reason", "ecc")
    assert result.exit_code == 0
    assert "1 slice(s) on it" in result.stderr
    assert fake_slurm.calls() == []
    with cli.engine.connect() as conn:
        assert conn.scalar(sa.select(Placement.state).where(Placement.job_id == 41)) == "running"


def test_drain_requeue_moves_slices_through_slurm_and_fails_their_placements(cli, fake_slurm):
    insert_inventory(cli.engine)
    place(cli.engine, 51, "gpu01", 0, share=30, state="running")
    place(cli.engine, 52, "gpu01", 0, share=30, state="pinned")
    place(cli.engine, 53, "gpu01", 1, share=30, state="running")  # another GPU: untouched
    fake_slurm.set_jobs([
        slurm_job(51, "vgpu-state=pinned share=30 class=throughput model=h100", state="RUNNING"),
        slurm_job(52, "vgpu-state=pinned share=30 class=throughput", state="PENDING"),
        slurm_job(53, "vgpu-state=pinned share=30 class=throughput", state="RUNNING"),
    ])
    result = cli("drain", "gpu01:h100_0", "--reason", "ecc", "--requeue")
    assert result.exit_code == 0, result.output
    calls = fake_slurm.calls()
    requeued = [c[2] for c in calls if c[1] == "requeuehold"]
    held_back = [c[2].removeprefix("JobId=") for c in calls if c[1] == "update" and "StartTime=now+365days" in c]
    assert requeued == ["51"], "running jobs requeued"
    assert sorted(held_back) == ["51", "52"], "both wait for a new placement, their begin time pushed ahead"
    comments = [a for c in calls for a in c if a.startswith("AdminComment=")]
    assert all("vgpu-state=unplaced" in a and "drained: ecc" in a for a in comments) and len(comments) == 2
    assert any("model=h100" in a for a in comments), "the job's own request rides along"
    with cli.engine.connect() as conn:
        states = dict(conn.execute(sa.select(Placement.job_id, Placement.state)).all())
        reason = conn.scalar(sa.select(Placement.reason).where(Placement.job_id == 51))
    assert states == {51: "failed", 52: "failed", 53: "running"}
    assert "GPU gpu01:0 (h100_0) drained: ecc" in reason


def test_requeue_refused_by_slurm_keeps_the_placement_and_exits_1(cli, fake_slurm):
    insert_inventory(cli.engine)
    place(cli.engine, 61, "gpu02", 0, share=30, state="running")
    fake_slurm.set_jobs([slurm_job(61, "vgpu-state=pinned share=30 class=throughput", state="RUNNING")])
    (fake_slurm.bin_dir / "scontrol").write_text("#!/bin/sh\necho 'Job is not requeueable' >&2\nexit 1\n")
    result = cli("drain", "gpu02:0", "--reason", "ecc", "--requeue")
    assert result.exit_code == 1
    assert "job 61" in result.stderr and "Job is not requeueable" in result.stderr
    assert gpu_state(cli, "gpu02", 0)[0] == "draining", "the drain itself stands"
    with cli.engine.connect() as conn:
        assert conn.scalar(sa.select(Placement.state).where(Placement.job_id == 61)) == "running"
