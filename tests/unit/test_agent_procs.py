"""Mapping a GPU process to its Slurm job from /proc, as Slurm's cgroups name it: cgroup v1
(22.05's proctrack/cgroup) and v2 (24.11's job_<id>, 26.05's SLUID directories)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from slurm_vgpu.agent.procs import JobCgroup, JobIds, job_cgroup, job_cgroup_of, job_of

CGROUP = """12:pids:/slurm_node1/uid_1000/job_42/step_batch/task_0
6:freezer:/slurm_node1/uid_1000/job_42/step_batch
4:memory:/slurm_node1/uid_1000/job_42/step_batch/task_0
1:name=systemd:/system.slice/slurmd.service
"""
# What a task of a cgroup/v2 job reads, in the node's cgroup namespace (docs: Slurm 24.11 and 26.05)
V2_2411 = "0::/system.slice/node1_slurmstepd.scope/job_3/step_batch/user/task_0\n"
V2_2605 = "0::/system.slice/node1_slurmstepd.scope/s1M1M91R6F6200/step_batch/user/task_0\n"
# ... and read from the host, whose kernel lists its v1 hierarchies first (a hybrid host)
HOST = """9:name=systemd:/
6:freezer:/
5:devices:/
4:memory:/process_api/f6507e3ecd15e9bfef42b42683938ab3
0::/slurm-vgpu/svgpu-2605-recommended/slurmd-node1/system.slice/node1_slurmstepd.scope/s3H1M91R1X7Q00/step_batch/user/task_0
"""


def job_from_cgroup(text: str, node: str) -> int | None:
    cgroup = job_cgroup(text, node)
    return cgroup.job_id if cgroup else None


def test_job_cgroup_of_this_node_names_the_job():
    assert job_from_cgroup(CGROUP, "node1") == 42
    assert job_from_cgroup("6:freezer:/slurm/uid_0/job_7/step_0\n", "node1") == 7  # plain build
    assert job_cgroup(CGROUP, "node1") == JobCgroup("/slurm_node1/uid_1000/job_42", unified=False, job_id=42)


def test_a_job_of_another_node_or_no_job_is_none():
    assert job_from_cgroup(CGROUP, "node2") is None
    assert job_from_cgroup("6:freezer:/\n1:name=systemd:/user.slice\n", "node1") is None
    assert job_from_cgroup("6:freezer:/slurm_node1/uid_0/job_7x\n", "node1") is None
    assert job_cgroup(V2_2411, "node2") is None
    assert job_cgroup("0::/system.slice/node1_slurmstepd.scope/slurmd\n", "node1") is None  # slurmd itself
    assert job_cgroup("0::/slurm_node1/uid_0/job_7\n", "node1") is None  # v1's shape, not in a v1 hierarchy


def test_a_v2_job_directory_is_the_job_id_or_a_sluid():
    assert job_cgroup(V2_2411, "node1") == JobCgroup(
        "/system.slice/node1_slurmstepd.scope/job_3", unified=True, job_id=3)
    assert job_cgroup("0::/system.slice/node1_slurmstepd.scope/job_4/step_batch/slurm\n", "node1").job_id == 4
    assert job_cgroup(V2_2605, "node1") == JobCgroup(
        "/system.slice/node1_slurmstepd.scope/s1M1M91R6F6200", unified=True, job_id=None, sluid="s1M1M91R6F6200")
    assert job_cgroup(HOST, "node1") == JobCgroup(
        "/slurm-vgpu/svgpu-2605-recommended/slurmd-node1/system.slice/node1_slurmstepd.scope/s3H1M91R1X7Q00",
        unified=True, job_id=None, sluid="s3H1M91R1X7Q00")
    assert job_cgroup("0::/system.slice/slurmstepd.scope/job_5/step_0/user/task_1\n", "node1").job_id == 5  # plain build


@dataclass
class ListedJob:
    """A job as slurmctld's ``squeue --json`` lists it (26.05 names its SLUID)."""

    job_id: int
    sluid: str = ""


class Slurmctld:
    """The job list slurmctld answers with, and how often it was asked."""

    def __init__(self, *jobs: ListedJob):
        self.listed = list(jobs)
        self.asked = 0

    def jobs(self) -> list[ListedJob]:
        self.asked += 1
        return self.listed


def test_a_sluid_names_the_job_slurmctld_lists_with_it():
    slurmctld, now = Slurmctld(ListedJob(1, "s1M1M91R6F6200"), ListedJob(2)), [0.0]
    job_ids = JobIds(slurmctld.jobs, refresh_after=5, clock=lambda: now[0])
    assert job_ids("s1M1M91R6F6200") == 1
    assert job_ids("s1M1M91R6F6200") == 1 and slurmctld.asked == 1  # a known SLUID asks nothing
    slurmctld.listed.append(ListedJob(3, "s3H1M91R1X7Q00"))
    assert job_ids("s3H1M91R1X7Q00") is None  # a new job's SLUID waits for the next refresh...
    now[0] = 5.0
    assert job_ids("s3H1M91R1X7Q00") == 3 and slurmctld.asked == 2  # ...and is then named
    assert job_ids("s9999999999999") is None and slurmctld.asked == 2  # unknown ones ask at most every 5 s


def fake_process(proc, pid: int, cgroup: str, environ: bytes = b"") -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(cgroup)
    (proc / str(pid) / "environ").write_bytes(environ)


def test_a_process_maps_to_its_job_from_its_cgroup_never_from_its_environment(tmp_path):
    job_ids = JobIds(Slurmctld(ListedJob(1, "s1M1M91R6F6200"), ListedJob(9, "s9999999999999")).jobs)
    fake_process(tmp_path, 10, V2_2605, b"SLURM_JOB_ID=1\0SLURM_JOB_SLUID=s1M1M91R6F6200\0")
    # job 1's user names another job in a process of their own job: it is still job 1's
    fake_process(tmp_path, 11, V2_2605, b"SLURM_JOB_ID=9\0SLURM_JOB_SLUID=s1M1M91R6F6200\0")
    fake_process(tmp_path, 12, "0::/user.slice\n", b"SLURM_JOB_ID=12\0")  # outside Slurm's cgroups
    fake_process(tmp_path, 13, V2_2411, b"SLURM_JOB_ID=99\0")
    assert job_of(10, "node1", job_ids, proc=tmp_path) == 1
    assert job_of(11, "node1", job_ids, proc=tmp_path) == 1
    assert job_cgroup_of(11, "node1", job_ids, proc=tmp_path).sluid == "s1M1M91R6F6200"
    assert job_of(12, "node1", job_ids, proc=tmp_path) is None  # anyone can set SLURM_JOB_ID
    assert job_of(13, "node1", job_ids, proc=tmp_path) == 3  # the cgroup wins over the environment


def test_a_gone_process_belongs_to_no_job(tmp_path):
    job_ids = JobIds(Slurmctld().jobs)
    assert job_of(2**22 + 12345, "node1", job_ids) is None
    assert job_of(os.getpid(), "no-such-node", job_ids, proc=tmp_path) is None
