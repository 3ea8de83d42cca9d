"""Slurm's accounting and fair-share on a real slurmdbd: a vgpu job is recorded with its vgpu units,
and a user with heavy recorded use waits behind a light one (its waiting jobs rank lower in Slurm's
priority, which the placement follows). One simulated H100 on one node, so waiting jobs compete."""
from __future__ import annotations

import pytest

from slurm_vgpu_dev import accounting

from ..conftest import TEST_PORT, own_cluster, slurm
from .jobs import ensure_user, job, submit, wait_for, wait_until

pytestmark = pytest.mark.e2e

ONE_GPU_LAYOUT = """
[[node]]
name = "solo"
cpus = 8
gpus = { h100 = 1 }
"""
HEAVY, LIGHT = "vgpu-heavy", "vgpu-light"


@pytest.fixture(scope="module")
def solo():
    with own_cluster("solo", ONE_GPU_LAYOUT, TEST_PORT + 40) as cluster:
        for user in (HEAVY, LIGHT):
            ensure_user(user)
        accounting.add_users(cluster, [HEAVY, LIGHT])
        yield cluster


def sacct_fields(cluster, job_id: int, fields: str) -> list[str] | None:
    """The job's allocation record as sacct shows it, once it has ended; None before."""
    out = slurm(cluster, "sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", f"State,{fields}").stdout.split("\n")[0]
    state, *values = out.split("|") if out else [""]
    return values if state == "COMPLETED" else None


def raw_usage(cluster, user: str) -> int:
    out = slurm(cluster, "sshare", "-n", "-P", "-A", accounting.ACCOUNT, "-u", user, "-o", "User,RawUsage").stdout
    return next((int(usage) for name, usage in (line.split("|") for line in out.splitlines()) if name == user), 0)


def priority(cluster, job_id: int) -> int:
    return int(slurm(cluster, "squeue", "-h", "-j", str(job_id), "-o", "%Q").stdout.strip())


def test_a_finished_vgpu_job_is_recorded_with_its_vgpu_units(solo):
    job_id = submit(solo, "--gres=vgpu:h100:30", script="true", user=LIGHT)
    wait_for(solo, [job_id])
    user, account, alloc = wait_until("sacct's record", lambda: sacct_fields(solo, job_id, "User,Account,AllocTRES"),
                                      30)
    assert (user, account) == (LIGHT, accounting.ACCOUNT)
    assert "gres/vgpu=30" in alloc.split(","), alloc
    # the partition bills a whole GPU as 10 CPUs: 1 CPU + 30 units
    assert "billing=4" in alloc.split(","), alloc


def test_the_light_users_waiting_job_is_placed_before_the_heavy_users_older_one(solo):
    blocker = submit(solo, "--gres=vgpu:h100:100", script="sleep 600", user=HEAVY)
    wait_for(solo, [blocker], states={"RUNNING"})
    # slurmctld adds running jobs' use every PriorityCalcPeriod (a minute)
    wait_until("the heavy user's recorded use", lambda: raw_usage(solo, HEAVY) > 10 * raw_usage(solo, LIGHT), 150,
               every=3)
    heavy = submit(solo, "--gres=vgpu:h100:100", script="true", user=HEAVY)
    light = submit(solo, "--gres=vgpu:h100:100", script="sleep 5", user=LIGHT)
    assert priority(solo, light) > priority(solo, heavy)
    slurm(solo, "scancel", str(blocker))
    wait_for(solo, [light], states={"RUNNING"})
    waiting = job(solo, heavy)
    assert waiting["JobState"] == "PENDING" and "vgpu-state=unplaced" in waiting["AdminComment"]
    done = wait_for(solo, [light, heavy])
    assert done[heavy]["JobState"] == "COMPLETED"
