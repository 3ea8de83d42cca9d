"""Freezing a job: its cgroup v1 freezer or its v2 task levels when Slurm made them, signals
otherwise; crash leftovers. (tests/integration/test_agent_freezer_v2.py freezes real v2 cgroups.)"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from slurm_vgpu.agent.freezer import Freezer, unified_mount


def no_sluids(sluid: str) -> None:  # slurmctld lists no 26.05 job
    return None


def fake_pid(job: int) -> int:
    """A pid above the kernel's limit (2**22): should a lookup fail and the freezer fall back to
    signals, no real process gets one."""
    return 2**22 + job


def job_cgroup(root: Path, node: str | None, uid: int, job: int, self_freezing: str = "0") -> Path:
    """A v1 freezer job level (``slurm_<node>/...``; ``slurm/...`` for a plain build), and a
    process of the job in a fake ``/proc`` under ``root`` whose cgroup file names it."""
    relative = f"{f'slurm_{node}' if node else 'slurm'}/uid_{uid}/job_{job}"
    path = root / "freezer" / relative
    path.mkdir(parents=True)
    (path / "freezer.state").write_text("THAWED")
    (path / "freezer.self_freezing").write_text(self_freezing)
    process = root / "proc" / str(fake_pid(job))
    process.mkdir(parents=True)
    (process / "cgroup").write_text(f"12:freezer:/{relative}/step_batch\n0::/user.slice\n")
    return path


def test_a_job_with_a_freezer_cgroup_is_frozen_and_thawed_there(tmp_path):
    for node, job in (("n1", 7), (None, 8)):  # Debian's multi-slurmd naming, and a plain build's
        cgroup = job_cgroup(tmp_path, node, 1000, job)
        freezer = Freezer("n1", job_of_sluid=no_sluids, root=tmp_path / "freezer", proc=tmp_path / "proc", unified=None)
        freezer.freeze(job, [fake_pid(job)])
        assert (cgroup / "freezer.state").read_text() == "FROZEN"
        freezer.thaw(job, [fake_pid(job)])
        assert (cgroup / "freezer.state").read_text() == "THAWED"


def test_another_nodes_job_level_is_not_taken_for_this_nodes(tmp_path):
    cgroup = job_cgroup(tmp_path, "n2", 1000, 7)
    Freezer("n1", job_of_sluid=no_sluids, root=tmp_path / "freezer", proc=tmp_path / "proc", unified=None).freeze(7, [fake_pid(7)])
    assert (cgroup / "freezer.state").read_text() == "THAWED"


def test_only_job_levels_we_froze_are_thawed_after_a_crash(tmp_path):
    ours = job_cgroup(tmp_path, "n1", 0, 1, self_freezing="1")
    other = job_cgroup(tmp_path, "n1", 0, 2, self_freezing="0")
    (other / "freezer.state").write_text("FROZEN")  # frozen from an ancestor: not ours to thaw
    freezer = Freezer("n1", job_of_sluid=no_sluids, root=tmp_path / "freezer", proc=tmp_path / "proc", unified=None)
    assert freezer.thaw_leftovers() == [1]
    assert (ours / "freezer.state").read_text() == "THAWED"
    assert (other / "freezer.state").read_text() == "FROZEN"


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def wait_state(pid: int, wanted: str) -> str:
    for _ in range(100):
        if state(pid) == wanted:
            break
        time.sleep(0.02)
    return state(pid)


def test_without_a_cgroup_the_jobs_processes_are_stopped_and_continued(tmp_path):
    process = subprocess.Popen(["sleep", "60"])
    try:
        freezer = Freezer("n1", job_of_sluid=no_sluids, root=tmp_path)
        freezer.freeze(9, [process.pid])
        assert wait_state(process.pid, "T") == "T"
        freezer.thaw(9, [process.pid])
        assert wait_state(process.pid, "S") == "S"
    finally:
        process.kill()
        process.wait()


# A cgroup/v2 job as Slurm 24.11 lays it out (26.05: the SLUID for job_<id>), as files
V2_JOB = "system.slice/n1_slurmstepd.scope/{job}"


def v2_job(tmp_path: Path, job: str, pid: int, environ: bytes = b"") -> Path:
    """A job directory with two task levels and slurmstepd's, and a process of its task_0 in a fake /proc."""
    directory = tmp_path / "unified" / V2_JOB.format(job=job)
    for level in ("step_batch/user/task_0", "step_batch/user/task_1", "step_batch/slurm", "step_batch/user"):
        (directory / level).mkdir(parents=True, exist_ok=True)
        (directory / level / "cgroup.freeze").write_text("0")
    (tmp_path / "proc" / str(pid)).mkdir(parents=True)
    (tmp_path / "proc" / str(pid) / "cgroup").write_text(f"0::/{V2_JOB.format(job=job)}/step_batch/user/task_0\n")
    (tmp_path / "proc" / str(pid) / "environ").write_bytes(environ)
    return directory


def v2_freezer(tmp_path: Path, job_of_sluid=no_sluids) -> Freezer:
    return Freezer("n1", job_of_sluid=job_of_sluid, root=tmp_path / "v1", proc=tmp_path / "proc",
                   unified=("/", tmp_path / "unified"))


def freeze_files(directory: Path) -> dict[str, str]:
    return {str(p.parent.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("cgroup.freeze"))}


def test_a_v2_job_is_frozen_at_its_task_levels_never_at_slurmstepds(tmp_path):
    job = v2_job(tmp_path, "job_3", 300)
    freezer = v2_freezer(tmp_path)
    freezer.freeze(3, [300])
    assert freeze_files(job) == {"step_batch/slurm": "0", "step_batch/user": "0",
                                 "step_batch/user/task_0": "1", "step_batch/user/task_1": "1"}
    freezer.thaw(3, [])  # its processes may have left the view: what was frozen is thawed
    assert set(freeze_files(job).values()) == {"0"}


def test_a_sluid_job_is_the_one_slurmctld_names_whatever_its_processes_say(tmp_path):
    pid = fake_pid(400)  # no real process is signalled when job 5 is found in no cgroup
    job = v2_job(tmp_path, "s3H1M91R1V8700", pid, b"SLURM_JOB_ID=5\0SLURM_JOB_SLUID=s3H1M91R1V8700\0")
    freezer = v2_freezer(tmp_path, {"s3H1M91R1V8700": 4}.get)
    freezer.freeze(5, [pid])  # the forged environment's job: not this cgroup's
    assert freeze_files(job)["step_batch/user/task_0"] == "0"
    freezer.freeze(4, [pid])
    assert freeze_files(job)["step_batch/user/task_0"] == "1"


def test_v2_task_levels_we_froze_are_thawed_after_a_crash(tmp_path):
    ours, slurms = v2_job(tmp_path, "job_5", 500), v2_job(tmp_path, "job_6", 600)
    v2_freezer(tmp_path).freeze(5, [500])
    (slurms / "step_batch/user/cgroup.freeze").write_text("1")  # scontrol suspend: not ours to thaw
    assert v2_freezer(tmp_path).thaw_leftovers() == [5]
    assert set(freeze_files(ours).values()) == {"0"}
    assert freeze_files(slurms)["step_batch/user"] == "1"


def test_the_cgroup2_mount_comes_from_mountinfo(tmp_path):
    (tmp_path / "mountinfo").write_text(
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755\n"
        "35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw\n")
    assert unified_mount(tmp_path / "mountinfo") == ("/", Path("/sys/fs/cgroup/unified"))
    assert unified_mount(tmp_path / "none") is None
