"""Advance reservations on a real Slurm: a vgpu job of no reservation is never pinned to a reserved
node (one reserved now, or one reserved before its time limit would end it), a job of a reservation
runs on that reservation's node, and one whose reservation has not started waits, told so, and
holds no GPU. Each is what Slurm itself would start; a pin elsewhere would wait out PinTimeout."""
from __future__ import annotations

import pytest

from ..conftest import TEST_PORT, own_cluster, slurm
from .jobs import job, submit, wait_for, wait_until

pytestmark = pytest.mark.e2e

# "kept" and "soon" come first in node order, so a placement blind to reservations would take them.
LAYOUT = """
[[node]]
name = "kept"
cpus = 4
gpus = { t4 = 1 }

[[node]]
name = "soon"
cpus = 4
gpus = { t4 = 1 }

[[node]]
name = "open"
cpus = 4
gpus = { t4 = 1 }
"""


@pytest.fixture(scope="module")
def reserved():
    with own_cluster("resv", LAYOUT, TEST_PORT + 120) as cluster:
        for name, start, node in [("team", "now", "kept"), ("later", "now+1800", "soon")]:
            slurm(cluster, "scontrol", "create", "reservation", f"ReservationName={name}", f"StartTime={start}",
                  "Duration=60", f"Nodes={node}", "Users=root")
        yield cluster


def test_vgpu_jobs_go_only_where_their_reservations_let_slurm_start_them(reserved):
    long = submit(reserved, "--gres=vgpu:60", script="sleep 15")  # unlimited: fits before no reservation
    wait_for(reserved, [long], states={"RUNNING"})
    member = submit(reserved, "--gres=vgpu:60", "--reservation=team", script="true")
    short = submit(reserved, "--gres=vgpu:60", "--time=5", script="true")  # ends before "later" starts
    waiting = submit(reserved, "--gres=vgpu:60", script="true")
    wait_until("the waiting job's reason", lambda: "wait=" in job(reserved, waiting)["AdminComment"])
    assert "vgpu-state=unplaced" in job(reserved, waiting)["AdminComment"]  # never pinned to a reserved node
    early = submit(reserved, "--gres=vgpu:60", "--reservation=later", script="true")
    wait_until("the reason of the job whose reservation is ahead",
               lambda: "its reservation later starts at" in job(reserved, early)["AdminComment"])
    done = wait_for(reserved, [long, member, short, waiting])
    assert {j: (d["JobState"], d["NodeList"]) for j, d in done.items()} == {
        long: ("COMPLETED", "open"), member: ("COMPLETED", "kept"), short: ("COMPLETED", "soon"),
        waiting: ("COMPLETED", "open")}
    told = job(reserved, early)
    assert told["JobState"] == "PENDING" and "vgpu-state=unplaced" in told["AdminComment"]
    slurm(reserved, "scancel", str(early))
