"""Job arrays on a real Slurm: each task is split off, placed and pinned as a job of its own (its own
job id, its own placement row), so the tasks of one array spread over GPUs and nodes, and a ``%N``
throttle holds."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from .jobs import ENDED, gres_used, jobs, output, submit

pytestmark = pytest.mark.e2e


def watch_array(cluster, array: int, tasks: int, timeout: float = 240.0):
    """Poll until every task of ``array`` has ended; returns the tasks' last records by job id, the
    most tasks seen running at once and the highest GresUsed of any GPU at any poll."""
    most_running = worst = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worst = max([worst, *gres_used(cluster).values()])
        mine = {job_id: d for job_id, d in jobs(cluster).items() if d["ArrayJobId"] == array}
        most_running = max(most_running, sum(d["JobState"] == "RUNNING" for d in mine.values()))
        split = {job_id: d for job_id, d in mine.items() if d["ArrayTaskId"] is not None}
        if len(split) == tasks and all(d["JobState"] in ENDED for d in split.values()):
            return split, most_running, worst
        time.sleep(0.5)
    raise AssertionError(f"array {array} unfinished: " + ", ".join(
        f"{j}: {d['ArrayTaskId']} {d['JobState']} {d['Reason']} {d['AdminComment']}" for j, d in mine.items()))


def placements_of(engine, job_ids) -> dict[int, sa.Row]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.job_id, p.job_submit_time, p.share, p.state, g.node, g.gres_type FROM placements p "
            "JOIN gpus g ON g.uuid = p.gpu_uuid WHERE p.job_id = ANY(:ids)"), {"ids": list(job_ids)}).all()
    assert len(rows) == len({r.job_id for r in rows}), rows  # one placement per task
    return {r.job_id: r for r in rows}


def test_eight_array_tasks_spread_over_gpus_each_with_its_own_placement(cluster, cluster_engine):
    script = "echo share=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; sleep 12"
    array = submit(cluster, "--array=1-8", "--gres=vgpu:40", script=script)
    tasks, most_running, worst = watch_array(cluster, array, 8)
    assert worst <= 100  # no GPU ever held more than its 100 units
    assert most_running >= 6  # 40% each: one task per GPU or two, never all on one GPU
    assert sorted(d["ArrayTaskId"] for d in tasks.values()) == list(range(1, 9))
    assert all(d["JobState"] == "COMPLETED" for d in tasks.values())
    deadline = time.monotonic() + 30
    while True:  # the epilog, or the daemon's next cycle, releases each slice
        rows = placements_of(cluster_engine, tasks)
        if {r.state for r in rows.values()} == {"released"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(rows) == set(tasks) and {r.state for r in rows.values()} == {"released"}
    for job_id, task in tasks.items():
        row = rows[job_id]  # Postgres and Slurm agree on the task's GPU, keyed as any job
        assert task["TresPerNode"] == f"gres:vgpu:{row.gres_type}:40" and task["NodeList"] == row.node, job_id
        assert row.job_submit_time == task["SubmitTime"] and row.share == 40
        assert "share=40" in output(cluster, job_id)  # the prolog found the task's own placement
    assert len({(r.node, r.gres_type) for r in rows.values()}) >= 4


def test_an_arrays_throttle_is_respected(cluster, cluster_engine):
    array = submit(cluster, "--array=1-6%2", "--gres=vgpu:10", script="sleep 3")
    tasks, most_running, worst = watch_array(cluster, array, 6)
    assert most_running <= 2 and worst <= 100
    assert all(d["JobState"] == "COMPLETED" for d in tasks.values())
    # one placement each: no task was pinned beyond the throttle, waited out PinTimeout and was placed again
    assert set(placements_of(cluster_engine, tasks)) == set(tasks)
