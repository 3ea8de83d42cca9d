"""Freezing a job: its cgroup v1 freezer when Slurm made one, signals otherwise; crash leftovers."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from slurm_vgpu.agent.freezer import Freezer


def job_cgroup(root: Path, node: str, uid: int, job: int, self_freezing: str = "0") -> Path:
    path = root / f"slurm_{node}" / f"uid_{uid}" / f"job_{job}"
    path.mkdir(parents=True)
    (path / "freezer.state").write_text("THAWED")
    (path / "freezer.self_freezing").write_text(self_freezing)
    return path


def test_a_job_with_a_freezer_cgroup_is_frozen_and_thawed_there(tmp_path):
    cgroup = job_cgroup(tmp_path, "n1", 1000, 7)
    freezer = Freezer("n1", root=tmp_path)
    freezer.freeze(7, [])
    assert (cgroup / "freezer.state").read_text() == "FROZEN"
    freezer.thaw(7, [])
    assert (cgroup / "freezer.state").read_text() == "THAWED"


def test_only_job_levels_we_froze_are_thawed_after_a_crash(tmp_path):
    ours = job_cgroup(tmp_path, "n1", 0, 1, self_freezing="1")
    other = job_cgroup(tmp_path, "n1", 0, 2, self_freezing="0")
    (other / "freezer.state").write_text("FROZEN")  # frozen from an ancestor: not ours to thaw
    assert Freezer("n1", root=tmp_path).thaw_leftovers() == [1]
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
        freezer = Freezer("n1", root=tmp_path)
        freezer.freeze(9, [process.pid])
        assert wait_state(process.pid, "T") == "T"
        freezer.thaw(9, [process.pid])
        assert wait_state(process.pid, "S") == "S"
    finally:
        process.kill()
        process.wait()
