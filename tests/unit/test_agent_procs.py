"""Mapping a GPU process to its Slurm job from /proc, as proctrack/cgroup names job cgroups."""
from __future__ import annotations

import os

from slurm_vgpu.agent.procs import job_from_cgroup, job_from_environ, job_of

CGROUP = """12:pids:/slurm_node1/uid_1000/job_42/step_batch/task_0
6:freezer:/slurm_node1/uid_1000/job_42/step_batch
4:memory:/slurm_node1/uid_1000/job_42/step_batch/task_0
1:name=systemd:/system.slice/slurmd.service
"""


def test_job_cgroup_of_this_node_names_the_job():
    assert job_from_cgroup(CGROUP, "node1") == 42
    assert job_from_cgroup("6:freezer:/slurm/uid_0/job_7/step_0\n", "node1") == 7  # plain build


def test_a_job_of_another_node_or_no_job_is_none():
    assert job_from_cgroup(CGROUP, "node2") is None
    assert job_from_cgroup("6:freezer:/\n1:name=systemd:/user.slice\n", "node1") is None
    assert job_from_cgroup("6:freezer:/slurm_node1/uid_0/job_7x\n", "node1") is None


def test_environment_is_the_fallback():
    assert job_from_environ(b"PATH=/bin\0SLURM_JOB_ID=99\0HOME=/root\0") == 99
    assert job_from_environ(b"PATH=/bin\0SLURM_JOB_IDX=1\0") is None


def test_a_gone_process_belongs_to_no_job(tmp_path):
    assert job_of(2**22 + 12345, "node1") is None
    assert job_of(os.getpid(), "no-such-node", proc=tmp_path) is None
