"""What the node agent finishes for a hook that could not: a prolog that failed without its
database, and a running placement whose job left nothing on the node (real Postgres; Slurm is a
recording stand-in, /proc a directory of the test's own)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from slurm_vgpu.agent import heal
from slurm_vgpu.config import Config
from slurm_vgpu.db.models import Placement
from slurm_vgpu.node import failed

from .cli_support import insert_inventory, place


@dataclass
class RecordingSlurm:
    """Answers ``node_reason`` with ``state``; records releases and resumes."""

    state: tuple[str, str]
    calls: list[tuple[str, object]] = field(default_factory=list)

    def release(self, job_id: int) -> None:
        self.calls.append(("release", job_id))

    def node_reason(self, node: str) -> tuple[str, str]:
        return self.state

    def resume(self, node: str) -> None:
        self.calls.append(("resume", node))


def config(tmp_path: Path, database_url: str = "postgresql://unused") -> Config:
    return Config(run_dir=tmp_path / "run", database_url=database_url)


def test_failed_prologs_are_released_and_the_prologs_drain_undone(tmp_path):
    conf = config(tmp_path)
    failed.record(conf, 41, "placement database unusable: connection refused")
    failed.record(conf, 42, "placement database unusable: connection refused")
    slurm = RecordingSlurm(("drain", heal.PROLOG_DRAIN))
    assert heal.failed_prologs(conf, slurm, "gpu01") == [41, 42]
    assert slurm.calls == [("release", 41), ("release", 42), ("resume", "gpu01")]
    assert failed.pending(conf) == {}
    assert heal.failed_prologs(conf, slurm, "gpu01") == []  # healed once


def test_a_drain_for_another_reason_is_left_to_the_admin(tmp_path):
    conf = config(tmp_path)
    failed.record(conf, 43, "placement database unusable: timeout")
    slurm = RecordingSlurm(("drain", "bad DIMM"))
    heal.failed_prologs(conf, slurm, "gpu01")
    assert slurm.calls == [("release", 43)]


def fake_proc(root: Path, cgroups: dict[int, str], environs: dict[int, bytes] | None = None) -> Path:
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
        (root / str(pid) / "environ").write_bytes((environs or {}).get(pid, b""))
    return root


def test_a_running_slice_whose_job_left_nothing_on_the_node_is_released(clean_db, database_url, tmp_path):
    insert_inventory(clean_db)
    for job_id, index in ((51, 0), (52, 1), (53, 1), (54, 0)):
        place(clean_db, job_id, "gpu01", index, state="running")
    with clean_db.begin() as conn:
        conn.execute(sa.update(Placement).values(started_at=sa.func.now() - sa.text("interval '5 minutes'")))
    conf = config(tmp_path, database_url)
    conf.slice_dir.mkdir(parents=True)
    (conf.slice_dir / "52").write_text("# slice file of a job still set up here\n")
    sluid = "s3H1M91R1V8700"  # Slurm 26.05 on cgroup v2: the job's directory is its SLUID
    proc = fake_proc(tmp_path / "proc", {700: "6:freezer:/slurm_gpu01/uid_0/job_53/step_batch\n",
                                         701: "6:freezer:/slurm_gpu02/uid_0/job_51/step_0\n",  # another node
                                         702: f"0::/system.slice/gpu01_slurmstepd.scope/{sluid}/step_0/user/task_0\n"},
                     {702: f"SLURM_JOB_ID=54\0SLURM_JOB_SLUID={sluid}\0".encode()})
    assert heal.lost_jobs(conf, "gpu01", proc) == [51]
    with clean_db.connect() as conn:
        states = dict(conn.execute(sa.select(Placement.job_id, Placement.state)).all())
    assert states == {51: "released", 52: "running", 53: "running", 54: "running"}


def test_a_slice_that_started_moments_ago_is_not_taken_for_lost(clean_db, database_url, tmp_path):
    insert_inventory(clean_db)
    place(clean_db, 61, "gpu01", 0, state="running")
    with clean_db.begin() as conn:  # started now: its steps may not be up yet
        conn.execute(sa.update(Placement).values(started_at=sa.func.now()))
    conf = config(tmp_path, database_url)
    assert heal.lost_jobs(conf, "gpu01", fake_proc(tmp_path / "proc", {})) == []
