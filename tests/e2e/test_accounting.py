"""Slurm's accounting, fair-share and QoS limits on a real slurmdbd: a vgpu job is recorded with its
vgpu units; a user with heavy recorded use waits behind a light one (its waiting jobs rank lower in
Slurm's priority, which the placement follows); a QoS cap on a user's vgpu units holds the job beyond
it with Slurm's own reason, pinned once. Two simulated H100s on one node, so waiting jobs compete;
limits enforced (AccountingStorageEnforce=limits) and a short PinTimeout, in this cluster only."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from slurm_vgpu_dev import accounting

from ..conftest import TEST_PORT, config_lines, engine_for, own_cluster, slurm
from .jobs import ensure_user, job, submit, wait_for, wait_until

pytestmark = pytest.mark.e2e

TWO_GPU_LAYOUT = """
[[node]]
name = "solo"
cpus = 8
gpus = { h100 = 2 }
"""
HEAVY, LIGHT, CAPPED = "vgpu-heavy", "vgpu-light", "vgpu-capped"
PIN_TIMEOUT = 10
CAP = "vgpu-cap"  # a QoS: at most 100 vgpu units per user


@pytest.fixture(scope="module")
def solo():
    with own_cluster("solo", TWO_GPU_LAYOUT, TEST_PORT + 40, before_start=[config_lines(
            "AccountingStorageEnforce=limits\n", f"PinTimeout={PIN_TIMEOUT}\n")]) as cluster:
        for user in (HEAVY, LIGHT, CAPPED):
            ensure_user(user)
        accounting.add_users(cluster, [HEAVY, LIGHT, CAPPED])  # limits enforced: no job without an association
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
    blockers = [submit(solo, "--gres=vgpu:h100:100", script="sleep 600", user=HEAVY) for _ in range(2)]
    wait_for(solo, blockers, states={"RUNNING"})
    # slurmctld adds running jobs' use every PriorityCalcPeriod (a minute)
    wait_until("the heavy user's recorded use", lambda: raw_usage(solo, HEAVY) > 10 * raw_usage(solo, LIGHT), 150,
               every=3)
    heavy = submit(solo, "--gres=vgpu:h100:100", script="true", user=HEAVY)
    light = submit(solo, "--gres=vgpu:h100:100", script="sleep 5", user=LIGHT)
    assert priority(solo, light) > priority(solo, heavy)
    slurm(solo, "scancel", str(blockers[0]))  # one GPU frees, for one of the two
    wait_for(solo, [light], states={"RUNNING"})
    waiting = job(solo, heavy)
    assert waiting["JobState"] == "PENDING" and "vgpu-state=unplaced" in waiting["AdminComment"]
    slurm(solo, "scancel", str(blockers[1]))
    done = wait_for(solo, [light, heavy])
    assert done[heavy]["JobState"] == "COMPLETED"


def pin_events(cluster, job_id: int) -> list[str]:
    with engine_for(cluster.database_url) as engine, engine.connect() as conn:
        return list(conn.scalars(sa.text("SELECT kind FROM events WHERE job_id = :j AND kind IN ('pinned', "
                                         "'placement-failed') ORDER BY id"), {"j": job_id}))


def test_a_job_over_its_users_qos_cap_waits_with_slurms_reason_pinned_once(solo):
    slurm(solo, "sacctmgr", "-i", "add", "qos", CAP, "MaxTRESPerUser=gres/vgpu=100")
    slurm(solo, "sacctmgr", "-i", "modify", "user", CAPPED, "set", f"qos+={CAP}")
    first, second = (submit(solo, "--gres=vgpu:h100:50", f"--qos={CAP}", script="sleep 600", user=CAPPED)
                     for _ in range(2))
    wait_for(solo, [first, second], states={"RUNNING"})
    third = submit(solo, "--gres=vgpu:h100:50", f"--qos={CAP}", script="true", user=CAPPED)
    # Slurm sees the units once the job is pinned, and holds it there for the cap
    wait_until("Slurm's reason", lambda: job(solo, third)["Reason"] == "QOSMaxGRESPerUser", 30)
    fourth = submit(solo, "--gres=vgpu:h100:50", f"--qos={CAP}", script="true", user=CAPPED)
    time.sleep(3 * PIN_TIMEOUT)
    held = job(solo, third)
    assert held["JobState"] == "PENDING" and held["Reason"] == "QOSMaxGRESPerUser"
    assert "vgpu-state=pinned" in held["AdminComment"] and pin_events(solo, third) == ["pinned"]
    # the user's next job is not pinned while one waits at the cap
    assert "vgpu-state=unplaced" in job(solo, fourth)["AdminComment"] and pin_events(solo, fourth) == []
    slurm(solo, "scancel", str(first))
    assert wait_for(solo, [third])[third]["JobState"] == "COMPLETED"
    slurm(solo, "scancel", str(second))
    assert wait_for(solo, [fourth])[fourth]["JobState"] == "COMPLETED"
    assert pin_events(solo, third) == pin_events(solo, fourth) == ["pinned"]
