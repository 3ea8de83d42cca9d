"""Faults on a real Slurm: a prolog whose database does not answer, a slurmctld that lost its state
and gives a job id out again, and a GPU's MPS control daemon that stops answering. None may run a
vgpu job without its slice, nor let two jobs share one, nor leave a running slice uncapped; all heal
without an admin."""
from __future__ import annotations

import shutil
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from slurm_vgpu.adapters.slurm import Slurm, SlurmError
from slurm_vgpu.contract import PINNED, UNPLACED
from slurm_vgpu.db import engine as db
from slurm_vgpu.mps import GpuMps
from slurm_vgpu_dev import cluster as devcluster

from ..conftest import TEST_PORT, config_lines, engine_for, own_cluster, slurm
from .jobs import ensure_user, job, output, output_dir, submit, wait_for, wait_until
from .node_helpers import mps_state, node_config, placement, wait_started

pytestmark = pytest.mark.e2e

USER, OTHER = "vgpu-fault-a", "vgpu-fault-b"
LICENSE = "hog"
LAYOUT = """
[[node]]
name = "solo"
cpus = 2
gpus = { t4 = 2 }
"""


# A license of one: a job that holds it keeps another that asks for it pending (Reason=Licenses)
# after its pin, which the placement, blind to licenses, gives it; CPUs would not, since a job is
# pinned only where its CPUs are idle.
ONE_LICENSE = config_lines(f"Licenses={LICENSE}:1\n")


@pytest.fixture(scope="module")
def faulty():
    for user in (USER, OTHER):
        ensure_user(user)
    with own_cluster("faults", LAYOUT, TEST_PORT + 70, before_start=[ONE_LICENSE]) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def engine(faulty):
    with engine_for(faulty.database_url) as engine:
        yield engine


def allow_connections(url: str, allowed: bool) -> None:
    """Open or close the cluster's database to every client (placement daemon, agents, prologs),
    as a Postgres outage would; closing also ends the connections it has."""
    target = db.database_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{target.database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": target.database})
    admin.dispose()


def node_state(cluster) -> tuple[str, str]:
    out = slurm(cluster, "sinfo", "--noheader", "--Node", "--format=%t|%E").stdout.strip().splitlines()[0]
    state, _, reason = out.partition("|")
    return state, reason


def test_a_prolog_without_its_database_requeues_the_job_held_and_the_agent_heals_it(faulty):
    hog = submit(faulty, f"--licenses={LICENSE}:1", script="sleep 300", user=USER)
    wait_for(faulty, [hog], states={"RUNNING"})
    sliced = submit(faulty, "--gres=vgpu:30", f"--licenses={LICENSE}:1", script="env | grep ^CUDA_MPS_ACTIVE",
                    user=USER)
    wait_until("the pin", lambda: "vgpu-state=pinned" in job(faulty, sliced)["AdminComment"])
    allow_connections(faulty.database_url, False)
    try:
        slurm(faulty, "scancel", str(hog))  # the pinned job starts now, with Postgres unreachable
        wait_until("the failed prolog's drain", lambda: node_state(faulty) == ("drain", "Prolog error"), timeout=90)
        state = job(faulty, sliced)
        assert state["JobState"] == "PENDING", state
        assert not (output_dir(faulty) / f"{sliced}.out").exists(), "the job ran without its slice"
    finally:
        allow_connections(faulty.database_url, True)
    done = wait_for(faulty, [sliced], timeout=300)[sliced]  # Slurm starts it 121 s after its requeue at the earliest
    assert done["JobState"] == "COMPLETED"
    assert output(faulty, sliced).strip() == "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30"
    wait_until("the node's resume", lambda: node_state(faulty)[0] in ("idle", "mix"))


def restart_ctld(cluster, state_from: Path | None = None) -> None:
    """Stop slurmctld (it saves its state), optionally put an older copy of its state in place, and
    start it again: a slurmctld that lost what it saved after that copy."""
    pid = devcluster._read_state(cluster)["services"]["slurmctld"]["pid"]
    devcluster._terminate(pid)
    if state_from is not None:
        spool = cluster.dir / "spool" / "ctld"
        shutil.rmtree(spool)
        shutil.copytree(state_from, spool)
    devcluster.restart(cluster, "slurmctld")
    devcluster._wait_ctld(cluster, 60)


def saved_ctld_state(cluster, name: str) -> Path:
    """A copy of slurmctld's state as it is now (stopped, so that it saves it, and started again),
    for :func:`restart_ctld` to bring it back later."""
    backup = cluster.dir / name
    devcluster._terminate(devcluster._read_state(cluster)["services"]["slurmctld"]["pid"])
    shutil.copytree(cluster.dir / "spool" / "ctld", backup)
    devcluster.restart(cluster, "slurmctld")
    devcluster._wait_ctld(cluster, 60)
    return backup


def test_a_job_id_given_out_again_never_shares_a_slice(faulty, engine):
    backup = saved_ctld_state(faulty, "ctld-state-copy")
    first = submit(faulty, "--gres=vgpu:t4:60", script="sleep 15", user=USER)
    wait_for(faulty, [first], states={"RUNNING"})
    restart_ctld(faulty, state_from=backup)  # slurmctld forgets the job; its node still runs it
    # its own output file: the first job's, of the same id, belongs to another user
    again = output_dir(faulty) / f"{first}-again.out"
    second = submit(faulty, "--gres=vgpu:t4:60", f"--output={again}", script="env | grep ^CUDA_MPS_ACTIVE",
                    user=OTHER)
    assert second == first, "slurmctld gave the id out again"
    assert wait_for(faulty, [second], timeout=180)[second]["JobState"] == "COMPLETED"
    assert again.read_text().strip() == "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=60", "it ran with a slice of its own"

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, job_submit_time, gpu_uuid, uid, share, placed_at, coalesce(ended_at, now()) AS ended_at "
            "FROM placements WHERE job_id = :j ORDER BY id"), {"j": first}).all()
    assert len({r.job_submit_time for r in rows}) == 2, "the two jobs have placements of their own"
    by_gpu = defaultdict(list)
    for r in rows:
        by_gpu[r.gpu_uuid] += [(r.placed_at, 1, r), (r.ended_at, 0, r)]
    for events in by_gpu.values():
        live = {}
        for _, starting, r in sorted(events, key=lambda e: (e[0], e[1])):
            if starting:
                live[r.id] = r
                assert sum(p.share for p in live.values()) <= 100
                assert len({p.uid for p in live.values()}) == 1, "two users' jobs shared one GPU"
            else:
                live.pop(r.id, None)
    wait_until("the first job's slice released", lambda: _all_ended(engine, first), timeout=120)


def test_an_update_meant_for_a_forgotten_job_never_reaches_the_job_given_its_id(faulty):
    """A placement cycle reads a job; slurmctld comes back from older state and gives that job's id
    to the next submission; the cycle's update, meant for the first, must not give the second the
    first's request (the AdminComment it rewrites)."""
    backup = saved_ctld_state(faulty, "ctld-state-before-forgotten")
    adapter = Slurm(faulty.slurm_conf)
    adapter.env.update(faulty.env())
    first = submit(faulty, "--hold", "--gres=vgpu:t4:40", "--vgpu-class=latency", user=USER)
    (read,) = [j for j in adapter.vgpu_jobs() if j.job_id == first]
    restart_ctld(faulty, state_from=backup)  # slurmctld forgets the first job
    # submit times count whole seconds, and 26.05 restarts within the first job's second
    time.sleep(max(0.0, read.submit_time + 1 - time.time()))
    second = submit(faulty, "--hold", "--gres=vgpu:t4:30", "--vgpu-class=throughput", user=OTHER)
    assert second == first, "slurmctld gave the id out again"
    try:
        with pytest.raises(SlurmError, match="not the job read a moment ago"):
            adapter.set_comment(read, replace(read.request, wait="placing"))
        with pytest.raises(SlurmError, match="not the job read a moment ago"):
            adapter.pin(read, ["t4_0"], 40, "solo", replace(read.request, state=PINNED))
        (now,) = [j for j in adapter.vgpu_jobs() if j.job_id == second]
        assert (now.request.share, now.request.slo_class, now.request.state) == (30, "throughput", UNPLACED), \
            "the second job keeps its own request"
        assert job(faulty, second)["NodeList"] == ""
    finally:
        slurm(faulty, "scancel", str(second))


def _all_ended(engine, job_id: int) -> bool:
    with engine.connect() as conn:
        return not conn.scalar(sa.text(
            "SELECT count(*) FROM placements WHERE job_id = :j AND state IN ('placed', 'pinned', 'running')"),
            {"j": job_id})


def test_a_wedged_mps_control_daemon_is_restarted_and_the_running_slice_capped_again(faulty, engine):
    """The fake daemon's simulate_hang (fake only): it answers nothing more, its PID alive. The agent
    asks it a question every 10 s within MpsHealthTimeout (10 s, the default) and restarts it at the
    second miss in a row."""
    running = submit(faulty, "--gres=vgpu:t4:40", "--vgpu-mem=1G", script="sleep 300", user=USER)
    wait_started(faulty, [running])
    uuid = placement(faulty, running)["gpu_uuid"]
    control = GpuMps.of(node_config(faulty), uuid).control
    wedged = control.daemon_pid()
    control.command("simulate_hang")
    wait_until("the wedged daemon's restart", lambda: control.daemon_pid() not in (None, wedged), timeout=120)
    (server,) = wait_until("the user's server started again", lambda: list(control.servers().values()))
    capped = {f"set_active_thread_percentage {server} 40", f"set_device_pinned_mem_limit {server} 0 1024M"}
    wait_until("its caps set again", lambda: capped <= set(mps_state(faulty, uuid)["commands"]))

    def recorded() -> list[str]:
        with engine.connect() as conn:
            return conn.scalars(sa.text("SELECT message FROM events WHERE kind = 'mps-wedged' AND gpu_uuid = :g"),
                                {"g": uuid}).all()

    (message,) = wait_until("the restart recorded", recorded)
    assert f"MPS control daemon {wedged} answered no question" in message
    assert job(faulty, running)["JobState"] == "RUNNING"
    slurm(faulty, "scancel", str(running))
    wait_for(faulty, [running])
