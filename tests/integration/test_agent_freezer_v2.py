"""The agent's v2 freezer against the kernel: a job's cgroups made as Slurm's cgroup/v2 lays them out,
a sleeping task in ``step_batch/user/task_0`` and a stand-in slurmstepd in ``step_batch/slurm``; the
task is frozen and thawed (cgroup.events ``frozen 1``/``0``), slurmstepd never."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from slurm_vgpu.agent.freezer import Freezer, unified_mount

UNIFIED = unified_mount()
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or UNIFIED is None or UNIFIED[0] != "/",
                                reason="needs root and a cgroup2 mount")


def frozen(cgroup: Path) -> str:
    return dict(line.split() for line in (cgroup / "cgroup.events").read_text().splitlines())["frozen"]


def wait_frozen(cgroup: Path, wanted: str) -> str:
    for _ in range(100):
        if frozen(cgroup) == wanted:
            break
        time.sleep(0.02)
    return frozen(cgroup)


NODE = f"vgtest{uuid.uuid4().hex[:8]}"  # no other cluster's node on this machine has this name
SLURMCTLD_JOBS = {"s3H1M91R1V8700": 5}  # the 26.05 SLUID slurmctld lists for job 5


@pytest.fixture
def job(tmp_path, request):
    """Job 5 of NODE (``job_5``, or the SLUID directory slurmctld lists for it), its task and
    slurmstepd processes; everything is killed and removed at the end."""
    directory_name = request.param
    root = UNIFIED[1] / f"slurm-vgpu-test-{uuid.uuid4().hex[:8]}"
    directory = root / "system.slice" / f"{NODE}_slurmstepd.scope" / directory_name
    task, stepd = directory / "step_batch" / "user" / "task_0", directory / "step_batch" / "slurm"
    task.mkdir(parents=True)
    stepd.mkdir(parents=True)
    processes = [subprocess.Popen(["sleep", "60"], preexec_fn=lambda c=c: (c / "cgroup.procs").write_text("0"))
                 for c in (task, stepd)]
    try:
        yield task, stepd, processes[0].pid
    finally:
        for cgroup in (task, stepd):
            (cgroup / "cgroup.kill").write_text("1")
        for process in processes:
            process.wait()
        for level in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            level.rmdir()
        root.rmdir()


@pytest.mark.parametrize("job", ["job_5", "s3H1M91R1V8700"], indirect=True, ids=["24.11", "26.05 SLUID"])
def test_the_guard_freezes_and_thaws_the_task_not_slurmstepd(job, tmp_path):
    task, stepd, pid = job
    freezer = Freezer(NODE, job_of_sluid=SLURMCTLD_JOBS.get, root=tmp_path)  # no v1 freezer is touched
    freezer.freeze(5, [pid])
    assert wait_frozen(task, "1") == "1"
    assert frozen(stepd) == "0"
    freezer.thaw(5, [pid])
    assert wait_frozen(task, "0") == "0"


@pytest.mark.parametrize("job", ["job_5"], indirect=True)
def test_a_task_left_frozen_by_a_crashed_agent_is_thawed_at_start(job, tmp_path):
    task, _, pid = job
    Freezer(NODE, job_of_sluid=SLURMCTLD_JOBS.get, root=tmp_path).freeze(5, [pid])
    assert wait_frozen(task, "1") == "1"
    assert Freezer(NODE, job_of_sluid=SLURMCTLD_JOBS.get, root=tmp_path).thaw_leftovers() == [5]
    assert wait_frozen(task, "0") == "0"
