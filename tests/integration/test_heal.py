"""What the node agent finishes for a hook that could not: a prolog that failed without its
database, and a running placement whose job left nothing on the node (real Postgres; Slurm is a
recording stand-in, /proc a directory of the test's own)."""
from __future__ import annotations

from dataclasses import dataclass, field
import time
from pathlib import Path

import sqlalchemy as sa

from slurm_vgpu.adapters.slurm import JobHold, SlurmError
from slurm_vgpu.agent import heal
from slurm_vgpu.config import Config
from slurm_vgpu.db.models import Placement
from slurm_vgpu.node import failed

from .cli_support import insert_inventory, place


@dataclass
class RecordingSlurm:
    """Answers ``node_reason`` with ``state`` and ``allocated_on`` with ``allocated``; records
    releases and resumes."""

    state: tuple[str, str] = ("idle", "")
    calls: list[tuple[str, object]] = field(default_factory=list)
    allocated: dict[int, int] = field(default_factory=dict)
    holds: dict[int, bool | None] = field(default_factory=dict)  # job -> held? (absent: held)
    requeues: dict[int, int] = field(default_factory=dict)  # job -> Slurm's restart count (absent: 0)
    down: set[str] = field(default_factory=set)  # calls that fail as with slurmctld restarting

    def job_hold(self, job_id: int) -> JobHold | None:
        self._answer("held")
        held = self.holds.get(job_id, True)
        return None if held is None else JobHold(held, self.requeues.get(job_id, 0))

    def _answer(self, call: str) -> None:
        if call in self.down:
            raise SlurmError(f"scontrol {call} failed: Unable to contact slurm controller (connect failure)")

    def allocated_on(self, node: str) -> dict[int, int]:
        return self.allocated

    def release(self, job_id: int) -> None:
        self._answer("release")
        self.calls.append(("release", job_id))
        self.holds[job_id] = False

    def node_reason(self, node: str) -> tuple[str, str]:
        return self.state

    def resume(self, node: str) -> None:
        self._answer("resume")
        self.calls.append(("resume", node))
        self.state = ("idle", "")


def config(tmp_path: Path, database_url: str = "postgresql://unused") -> Config:
    return Config(run_dir=tmp_path / "run", database_url=database_url)


def settled() -> float:
    """A round's time once every record written so far has settled (heal.SETTLE)."""
    return time.time() + heal.SETTLE


def test_failed_prologs_are_released_and_the_prologs_drain_undone(tmp_path):
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 41, "placement database unusable: connection refused")
    failed.record(conf, "gpu01", 42, "placement database unusable: connection refused")
    failed.record(conf, "gpu02", 43, "placement database unusable: connection refused")  # its own agent's
    slurm = RecordingSlurm(state=("drain", heal.PROLOG_DRAIN))
    assert heal.failed_prologs(conf, slurm, "gpu01") == [41, 42]
    assert slurm.calls == [("release", 41), ("release", 42), ("resume", "gpu01")]
    assert heal.failed_prologs(conf, slurm, "gpu01", now=settled()) == []  # seen released: the records go
    assert failed.pending(conf, "gpu01") == {}
    assert list(failed.pending(conf, "gpu02")) == [43]
    assert slurm.calls == [("release", 41), ("release", 42), ("resume", "gpu01")]  # healed once


def test_a_hold_that_came_after_the_release_is_released_too(tmp_path):
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 48, "placement database unusable: timeout")
    slurm = RecordingSlurm(state=("drain", heal.PROLOG_DRAIN))
    assert heal.failed_prologs(conf, slurm, "gpu01") == [48]
    slurm.holds[48] = True  # Slurm held it again after our release
    assert heal.failed_prologs(conf, slurm, "gpu01") == [48]
    assert heal.failed_prologs(conf, slurm, "gpu01", now=settled()) == []
    assert slurm.calls == [("release", 48), ("resume", "gpu01"), ("release", 48)]
    assert failed.pending(conf, "gpu01") == {}


def test_a_job_not_yet_requeued_held_keeps_its_record_and_an_ended_one_is_dropped(tmp_path):
    conf = config(tmp_path)
    for job_id in (44, 45):
        failed.record(conf, "gpu01", job_id, "placement database unusable: timeout")
    slurm = RecordingSlurm(state=("drain", heal.PROLOG_DRAIN), holds={44: False, 45: None})
    assert heal.failed_prologs(conf, slurm, "gpu01", now=settled()) == []
    assert slurm.calls == [("resume", "gpu01")]  # 45 ended meanwhile: nothing to release
    assert list(failed.pending(conf, "gpu01")) == [44]  # released once Slurm holds it, not before
    slurm.holds[44] = True
    assert heal.failed_prologs(conf, slurm, "gpu01") == [44]
    assert ("release", 44) in slurm.calls


def test_a_job_slurm_requeued_without_a_hold_since_its_prolog_failed_lets_the_node_resume(tmp_path):
    """Seen under a burst on 22.05: slurmctld could not confirm the launch and requeued the job
    unheld ("missing from batch node ... Requeuing job") while its prolog failed on a database out
    of connections. Nothing is left to release; the node is resumed all the same, where before the
    record waited for a hold that never came and the node stayed drained."""
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 49, "placement database unusable: too many clients", restarts=0)
    failed.record(conf, "gpu01", 50, "placement database unusable: too many clients", restarts=1)
    slurm = RecordingSlurm(state=("drain", heal.PROLOG_DRAIN), holds={49: False, 50: False}, requeues={49: 1, 50: 1})
    assert heal.failed_prologs(conf, slurm, "gpu01", now=settled()) == []
    assert slurm.calls == [("resume", "gpu01")]
    assert list(failed.pending(conf, "gpu01")) == [50]  # its prolog saw this requeue: a hold may follow
    kept = failed.pending(conf, "gpu01")[50]
    assert (kept.reason, kept.restarts) == ("placement database unusable: too many clients", 1)
    (conf.run_dir / "failed-prologs" / "gpu01" / "51").write_text("placement database unusable: timeout\n")
    older = failed.pending(conf, "gpu01")[51]  # a record written before the count was kept
    assert (older.reason, older.restarts) == ("placement database unusable: timeout", 0)


def test_a_drain_that_comes_after_the_record_was_healed_is_undone_too(tmp_path):
    """Seen under a burst of 1,000 jobs on 22.05: slurmctld requeued the job unheld while its prolog
    still waited for a database connection; the agent took the record as done before slurmctld
    drained the node for that prolog, dropped it, and the node stayed drained with no record."""
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 52, "placement database unusable: too many clients", restarts=0)
    slurm = RecordingSlurm(state=("idle", ""), holds={52: False}, requeues={52: 1})
    assert heal.failed_prologs(conf, slurm, "gpu01") == []
    assert list(failed.pending(conf, "gpu01")) == [52] and slurm.calls == []  # nothing to undo yet
    slurm.state = ("drain", heal.PROLOG_DRAIN)  # the prolog's drain arrives
    heal.failed_prologs(conf, slurm, "gpu01")
    assert slurm.calls == [("resume", "gpu01")]
    heal.failed_prologs(conf, slurm, "gpu01", now=settled())
    assert failed.pending(conf, "gpu01") == {}


def test_a_settling_record_costs_no_question_about_its_job(tmp_path):
    """An agent round comes every second, and a burst can leave many records settling for a minute:
    only the node is asked about, once a round, not each record's job."""
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 53, "placement database unusable: too many clients", restarts=0)
    slurm = RecordingSlurm(state=("idle", ""), holds={53: False}, requeues={53: 1})
    heal.failed_prologs(conf, slurm, "gpu01")
    assert failed.pending(conf, "gpu01")[53].reason == failed.SETTLING
    slurm.down = {"held"}  # a question about the job would now fail the round
    slurm.state = ("drain", heal.PROLOG_DRAIN)
    heal.failed_prologs(conf, slurm, "gpu01")
    assert slurm.calls == [("resume", "gpu01")]


def test_a_slurmctld_that_does_not_answer_leaves_the_work_for_the_next_round(tmp_path):
    """Seen under faults: a restarting slurmctld was taken for one that no longer knew the jobs;
    their records were dropped, and the jobs stayed held and the node drained."""
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 47, "placement database unusable: timeout")
    slurm = RecordingSlurm(state=("drain", heal.PROLOG_DRAIN), down={"held"})
    assert heal.failed_prologs(conf, slurm, "gpu01") == []
    assert list(failed.pending(conf, "gpu01")) == [47] and slurm.calls == []
    slurm.down = {"resume"}  # released, then slurmctld goes away before the node is resumed
    assert heal.failed_prologs(conf, slurm, "gpu01") == [47]
    assert slurm.calls == [("release", 47)] and list(failed.pending(conf, "gpu01")) == [47]
    slurm.down = set()
    assert heal.failed_prologs(conf, slurm, "gpu01", now=settled()) == []
    assert slurm.calls == [("release", 47), ("resume", "gpu01")]  # released once, resumed at last
    assert failed.pending(conf, "gpu01") == {}


def test_a_node_still_draining_for_the_prolog_is_resumed_too(tmp_path):
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 46, "placement database unusable: timeout")
    slurm = RecordingSlurm(state=("drng", heal.PROLOG_DRAIN))  # other jobs still run there
    heal.failed_prologs(conf, slurm, "gpu01")
    assert ("resume", "gpu01") in slurm.calls


def test_a_drain_for_another_reason_is_left_to_the_admin(tmp_path):
    conf = config(tmp_path)
    failed.record(conf, "gpu01", 43, "placement database unusable: timeout")
    slurm = RecordingSlurm(state=("drain", "bad DIMM"))
    heal.failed_prologs(conf, slurm, "gpu01")
    assert slurm.calls == [("release", 43)]


def fake_proc(root: Path, cgroups: dict[int, str], environs: dict[int, bytes] | None = None) -> Path:
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
        (root / str(pid) / "environ").write_bytes((environs or {}).get(pid, b""))
    return root


def test_a_running_slice_whose_job_has_no_process_left_on_the_node_is_released(clean_db, database_url, tmp_path):
    insert_inventory(clean_db)
    for job_id, index in ((51, 0), (52, 1), (53, 1), (54, 1), (55, 0), (56, 0)):
        place(clean_db, job_id, "gpu01", index, share=15, state="running")
    with clean_db.begin() as conn:
        conn.execute(sa.update(Placement).values(started_at=sa.func.now() - sa.text("interval '5 minutes'"),
                                                 job_submit_time=Placement.job_id * 1000))
        placement_52 = conn.scalar(sa.select(Placement.id).where(Placement.job_id == 52))
    conf = config(tmp_path, database_url)
    conf.slice_dir.mkdir(parents=True)
    # job 52 ended with no epilog: its slice file is still there, naming its placement
    (conf.slice_dir / "52").write_text(f"# slurm-vgpu slice of job 52 (placement {placement_52}); ...\n")
    sluid = "s3H1M91R1V8700"  # Slurm 26.05 on cgroup v2: the job's directory is its SLUID
    proc = fake_proc(tmp_path / "proc", {700: "6:freezer:/slurm_gpu01/uid_0/job_53/step_batch\n",
                                         701: "6:freezer:/slurm_gpu02/uid_0/job_51/step_0\n",  # another node
                                         702: f"0::/system.slice/gpu01_slurmstepd.scope/{sluid}/step_0/user/task_0\n"},
                     {702: b"SLURM_JOB_ID=57\0"})  # what a process says of itself counts for nothing
    # 54: an allocation with no process yet (salloc before its first step); 55: Slurm runs another
    # job that was given 55's id again
    slurm = RecordingSlurm(allocated={54: 54_000, 55: 1})
    assert heal.lost_jobs(conf, slurm, "gpu01", {sluid: 56}.get, proc) == [51, 52, 55]
    with clean_db.connect() as conn:
        states = dict(conn.execute(sa.select(Placement.job_id, Placement.state)).all())
    assert states == {51: "released", 52: "released", 53: "running", 54: "running", 55: "released",
                      56: "running"}
    assert not (conf.slice_dir / "52").exists()


def test_a_slice_that_started_moments_ago_is_not_taken_for_lost(clean_db, database_url, tmp_path):
    insert_inventory(clean_db)
    place(clean_db, 61, "gpu01", 0, state="running")
    with clean_db.begin() as conn:  # started now: its steps may not be up yet
        conn.execute(sa.update(Placement).values(started_at=sa.func.now()))
    conf = config(tmp_path, database_url)
    assert heal.lost_jobs(conf, RecordingSlurm(), "gpu01", {}.get, fake_proc(tmp_path / "proc", {})) == []
