"""Preemption on a real Slurm: a latency slice that finds its GPU full of other slices has exactly the
best-effort slices it needs requeued (SIGTERM first, a grace time, their reason in AdminComment),
runs in their room, and the victims run again later. One simulated H100 on one node; slurm.conf
has PreemptType=preempt/qos and PreemptMode=REQUEUE, slurm-vgpu.conf PreemptBestEffort=yes, in this
cluster only."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from ..conftest import TEST_PORT, config_lines, engine_for, own_cluster, slurm
from .jobs import job, output, submit, wait_for, wait_until

pytestmark = pytest.mark.e2e

ONE_GPU_LAYOUT = """
[[node]]
name = "solo"
cpus = 8
gpus = { h100 = 1 }
"""
GRACE = 5
# a best-effort job that checkpoints as a preempted job should: on SIGTERM it notes so and waits
# to be requeued; run again (Slurm counts restarts), it finishes at once
CHECKPOINTING = ('if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo ran-again; exit 0; fi; '
                 "trap 'echo got-SIGTERM' TERM; while :; do sleep 1; done")


# Slurm refuses PreemptMode=REQUEUE beside PreemptType=preempt/none (the default); preempt/qos with no
# QoS that may preempt another leaves all preempting to slurm-vgpu
ALLOW_PREEMPTION = config_lines("PreemptType=preempt/qos\nPreemptMode=REQUEUE\n",
                                f"PreemptBestEffort=yes\nPreemptGraceTime={GRACE}\n")


@pytest.fixture(scope="module")
def solo():
    with own_cluster("preempt", ONE_GPU_LAYOUT, TEST_PORT + 130, before_start=[ALLOW_PREEMPTION]) as cluster:
        yield cluster


def restarts(cluster, job_id: int) -> int:
    record = slurm(cluster, "scontrol", "show", "job", "-o", str(job_id)).stdout
    return int(record.split("Restarts=", 1)[1].split()[0])


def placements(cluster, job_id: int) -> list[tuple[str, str | None]]:
    with engine_for(cluster.database_url) as engine, engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.text("SELECT state, reason FROM placements WHERE job_id = :j ORDER BY id"), {"j": job_id})]


def sliced(cluster, *job_ids: int) -> None:
    """Waits until these jobs run with their slices set up (their prologs done)."""
    wait_for(cluster, job_ids, states={"RUNNING"})
    for job_id in job_ids:
        wait_until(f"job {job_id}'s slice set up", lambda: placements(cluster, job_id)[-1:] == [("running", None)], 30,
                   seen=lambda: placements(cluster, job_id))


def test_a_latency_slice_requeues_exactly_the_best_effort_slice_it_needs(solo):
    throughput = submit(solo, "--gres=vgpu:h100:30", "--vgpu-class=throughput", script="sleep 600")
    old = submit(solo, "--gres=vgpu:h100:40", "--vgpu-class=best-effort", script="sleep 600")
    sliced(solo, throughput, old)
    young = submit(solo, "--gres=vgpu:h100:30", "--vgpu-class=best-effort", "--open-mode=append",
                   script=CHECKPOINTING)
    # running with its slice set up: a slice whose prolog still runs is no victim yet (its room
    # counts as taken), and the older best-effort slice would go instead
    sliced(solo, young)

    urgent = submit(solo, "--gres=vgpu:h100:30", "--vgpu-class=latency", script="sleep 15")
    # it waits saying what is done for it, while the victim has its grace time
    wait_until("the latency job's reason", lambda: f"best-effort job(s) {young}" in job(solo, urgent)["AdminComment"],
               60, seen=lambda: job(solo, urgent)["AdminComment"])
    assert f"preempted by latency job {urgent}" in job(solo, young)["AdminComment"]
    wait_for(solo, [urgent], states={"RUNNING"}, timeout=90)

    # the young slice (least work lost) went, got SIGTERM first, and was told why; the others run on
    assert restarts(solo, young) == 1
    assert "got-SIGTERM" in output(solo, young)
    assert f"requeued: preempted by latency job {urgent}" in job(solo, young)["AdminComment"]
    assert placements(solo, young)[0] == ("released", f"preempted by latency job {urgent} on solo")
    for kept in (throughput, old):
        assert job(solo, kept)["JobState"] == "RUNNING" and restarts(solo, kept) == 0
    assert job(solo, urgent)["TresPerNode"] in ("gres:vgpu:h100_0:30", "gres/vgpu:h100_0:30")
    wait_until("the latency job's slice set up", lambda: placements(solo, urgent) == [("running", None)], 30)

    # once the latency job is done, the victim is placed again and runs to its end
    wait_for(solo, [urgent])
    wait_for(solo, [young], timeout=240)
    assert job(solo, young)["JobState"] == "COMPLETED"
    assert "ran-again" in output(solo, young)
    assert [state for state, _ in placements(solo, young)] == ["released", "released"]
    slurm(solo, "scancel", str(throughput), str(old))


def test_a_latency_slice_that_room_elsewhere_can_take_preempts_nothing(solo):
    filler = submit(solo, "--gres=vgpu:h100:60", "--vgpu-class=best-effort", script="sleep 600")
    sliced(solo, filler)
    urgent = submit(solo, "--gres=vgpu:h100:40", "--vgpu-class=latency", script="true")
    wait_for(solo, [urgent])
    assert job(solo, filler)["JobState"] == "RUNNING" and restarts(solo, filler) == 0
    slurm(solo, "scancel", str(filler))
