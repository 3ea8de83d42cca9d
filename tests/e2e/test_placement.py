"""The placement daemon on a real Slurm: slices land whole on one GPU, never overfill it, never mix
users, survive a SIGKILLed daemon, and stay single-leader with several daemons running."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
import sqlalchemy as sa

from slurm_vgpu_dev import cluster as devcluster
from slurm_vgpu.placement.daemon import LEADER_LOCK

from ..conftest import TEST_PORT, own_cluster, slurm
from .jobs import ENDED, ensure_user, gres_used, job, submit, wait_for, wait_until

pytestmark = pytest.mark.e2e

TWO_GPU_LAYOUT = """
[[node]]
name = "duo"
cpus = 16
gpus = { a100 = 2 }
"""


@pytest.fixture(scope="module")
def duo():
    """A one-node cluster with two GPUs, on its own ports and database."""
    with own_cluster("duo", TWO_GPU_LAYOUT, TEST_PORT + 50) as cluster:
        yield cluster


def test_slices_land_whole_and_a_slice_waits_for_one_gpu_with_room(duo):
    first, second = (submit(duo, "--gres=vgpu:60", script="sleep 6") for _ in range(2))
    wait_for(duo, [first, second], states={"RUNNING"})
    fifty = submit(duo, "--gres=vgpu:50", script="true")
    thirty = submit(duo, "--gres=vgpu:30", script="sleep 2")
    wait_for(duo, [thirty], states={"RUNNING"} | ENDED)
    waiting = job(duo, fifty)
    assert waiting["JobState"] == "PENDING"  # 40 free on each GPU, never 50 on one
    assert "vgpu-state=unplaced" in waiting["AdminComment"] and "wait=" in waiting["AdminComment"]
    assert all(used <= 100 for used in gres_used(duo).values())
    done = wait_for(duo, [first, second, fifty, thirty])
    types = {j: d["TresPerNode"] for j, d in done.items()}
    assert all(d["JobState"] == "COMPLETED" for d in done.values())
    assert {types[first], types[second]} == {"gres:vgpu:a100_0:60", "gres:vgpu:a100_1:60"}
    assert types[fifty] in ("gres:vgpu:a100_0:50", "gres:vgpu:a100_1:50")


def test_a_job_waits_unpinned_while_no_node_has_its_cpus_idle_and_then_runs(duo):
    """Slurm would keep a job pending where its CPUs are taken; pinned there it would only wait and
    be placed again after PinTimeout. It waits unplaced, saying why, and runs once they are idle."""
    hog = submit(duo, "--cpus-per-task=12", script="sleep 8")  # 12 of the node's 16 CPUs
    wait_for(duo, [hog], states={"RUNNING"})
    wide = submit(duo, "--gres=vgpu:20", "--cpus-per-task=8", script="true")
    wait_until("its wait reason", lambda: "wait=" in job(duo, wide)["AdminComment"])
    reason = job(duo, wide)["AdminComment"]
    assert "needs 8 CPUs on a node with a fitting GPU; the most free is 4" in reason
    assert job(duo, wide)["TresPerNode"] == "" and "vgpu-state=unplaced" in reason  # no pin while it waits
    done = wait_for(duo, [hog, wide])
    assert done[wide]["JobState"] == "COMPLETED" and done[wide]["TresPerNode"].startswith("gres:vgpu:a100_")


def test_owner_cannot_start_an_unplaced_job(duo):
    ensure_user("vgpu-alice")
    blocker = submit(duo, "--gres=vgpu:a100:100", script="sleep 8")
    blocker2 = submit(duo, "--gres=vgpu:a100:100", script="sleep 8")
    wait_for(duo, [blocker, blocker2], states={"RUNNING"})
    held = submit(duo, "--gres=vgpu:20", script="true", user="vgpu-alice")
    for attempt in (["StartTime=now"], ["EligibleTime=now"], ["NodeList=duo"], ["Gres=vgpu:a100_0:20"]):
        refused = slurm(duo, "scontrol", "update", f"JobId={held}", *attempt, user="vgpu-alice", check=False)
        assert refused.returncode != 0 and "Access/permission denied" in refused.stderr, attempt
    # Releasing is the owner's right (the job is not held: it waits for its begin time), and it
    # changes nothing: the job still has no GRES, so it could not run unfenced.
    slurm(duo, "scontrol", "release", str(held), user="vgpu-alice", check=False)
    state = job(duo, held)
    assert state["JobState"] == "PENDING" and "vgpu-state=unplaced" in state["AdminComment"]
    assert state.get("TresPerNode", "") in ("", "(null)")
    done = wait_for(duo, [held, blocker, blocker2])
    assert done[held]["JobState"] == "COMPLETED"


def test_two_hundred_mixed_jobs_never_overfill_or_mix_users(cluster, cluster_engine):
    users = [f"vgpu-u{i}" for i in range(3)]
    for user in users:
        ensure_user(user)
    rng = random.Random(7)
    job_ids = []
    for _ in range(200):
        share = rng.choice([10, 20, 25, 30, 40, 50, 60, 75, 100])
        klass = rng.choice(["latency", "throughput", "best-effort"])
        model = rng.choice(["", "", "h100:", "a100:", "t4:"])
        options = [f"--gres=vgpu:{model}{share}", f"--vgpu-class={klass}"]
        job_ids.append(submit(cluster, *options, script=f"sleep {rng.choice([0, 1, 2])}", user=rng.choice(users)))
    worst = 0
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        worst = max([worst, *gres_used(cluster).values()])
        states = slurm(cluster, "squeue", "-h", "-o", "%i", "-j", ",".join(map(str, job_ids)), check=False).stdout
        if not states.strip():
            break
        time.sleep(0.5)
    assert worst <= 100
    done = wait_for(cluster, job_ids, timeout=30)
    assert all(d["JobState"] == "COMPLETED" for d in done.values())
    assert_postgres_history_is_sound(cluster_engine, job_ids)


def assert_postgres_history_is_sound(engine, job_ids, timeout: float = 30.0):
    """Every job's slice released (by the daemon's next cycle after the job ended), then a replay of
    every placement interval: no GPU over 100 and one Unix user at any instant."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT job_id, gpu_uuid, uid, share, placed_at, coalesce(ended_at, now()) AS ended_at, "
                        "state FROM placements WHERE job_id = ANY(:ids)"),
                {"ids": job_ids},
            ).all()
        released = {r.job_id for r in rows if r.state == "released"}
        if released == set(job_ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert released == set(job_ids), sorted((r.job_id, r.state) for r in rows if r.state != "released")
    by_gpu = defaultdict(list)
    for r in rows:
        by_gpu[r.gpu_uuid] += [(r.placed_at, 1, r), (r.ended_at, 0, r)]
    for events in by_gpu.values():
        live = {}
        for _, starting, r in sorted(events, key=lambda e: (e[0], e[1])):
            if starting:
                live[r.job_id] = r
                assert sum(p.share for p in live.values()) <= 100
                assert len({p.uid for p in live.values()}) == 1
            else:
                live.pop(r.job_id, None)


def test_a_killed_daemon_loses_no_job(cluster, cluster_engine):
    job_ids = [submit(cluster, f"--gres=vgpu:{s}", script="sleep 1") for s in (30, 70, 50, 20, 100, 40) * 4]
    rng = random.Random(3)
    for _ in range(6):  # SIGKILL at random points of its cycles, then start it again
        time.sleep(rng.uniform(0.1, 1.2))
        pid = devcluster._read_state(cluster)["services"]["placement"]["pid"]
        os.kill(pid, signal.SIGKILL)
        devcluster.restart(cluster, "placement")
    done = wait_for(cluster, job_ids, timeout=240)
    assert all(d["JobState"] == "COMPLETED" for d in done.values())
    with cluster_engine.connect() as conn:
        doubles = conn.scalar(sa.text(
            "SELECT count(*) FROM (SELECT job_id FROM placements WHERE job_id = ANY(:ids) AND state = 'released' "
            "GROUP BY job_id HAVING count(*) > 1) d"), {"ids": job_ids})
    assert doubles == 0
    assert_postgres_history_is_sound(cluster_engine, job_ids)


def test_several_daemons_elect_one_leader(cluster, cluster_engine):
    extra = [
        subprocess.Popen([sys.executable, "-m", "slurm_vgpu", "placement", "run", "--config", str(cluster.vgpu_conf)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for _ in range(2)
    ]
    try:
        job_ids = [submit(cluster, f"--gres=vgpu:{s}", script="true") for s in (40, 60, 30, 70) * 5]
        with cluster_engine.connect() as conn:
            holders = conn.scalar(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND (classid::bigint << 32 | objid::bigint) = :k"), {"k": LEADER_LOCK})
        assert holders == 1
        done = wait_for(cluster, job_ids, timeout=180)
        assert all(d["JobState"] == "COMPLETED" for d in done.values())
    finally:
        for process in extra:
            process.terminate()
    logs = [p.communicate(timeout=20)[0] for p in extra]
    assert not any("became the placement leader" in log for log in logs)  # the first daemon kept it
    assert_postgres_history_is_sound(cluster_engine, job_ids)


def test_a_request_no_gpu_can_meet_fails_fast_with_a_reason(cluster):
    # job_submit.lua lets 20G through (the largest GPU has 80G), but no T4 has 20G.
    job_id = submit(cluster, "--gres=vgpu:t4:30", "--vgpu-mem=20G", script="true")
    done = wait_for(cluster, [job_id], timeout=60)[job_id]
    assert done["JobState"] == "CANCELLED"
    assert "vgpu-state=failed" in done["AdminComment"]
    assert "t4" in done["AdminComment"].lower() and "wait=" in done["AdminComment"]
