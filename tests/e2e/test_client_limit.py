"""The MPS client limit on a real Slurm: sixty one-unit jobs of one user, on a node whose only GPU is
a simulated A100 (compute capability 8.0: its MPS server takes 48 clients), never hold more than 48
slices of it nor run more than 48 at once, though its 100 units and the node's 64 CPUs would take
all sixty; the others wait with the reason, and all sixty finish. Slurm, the placement daemon,
Postgres and the node hooks are real; the GPU is an inventory file and MPS the dev kit's stand-in."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from ..conftest import TEST_PORT, engine_for, own_cluster
from .jobs import ENDED, gres_used, jobs, submit, wait_for

pytestmark = pytest.mark.e2e

ONE_GPU_LAYOUT = """
[[node]]
name = "solo"
cpus = 64
memory_mib = 65536
gpus = { a100 = 1 }
"""

FULL = "already holds 48 slices, the most its MPS server takes"


@pytest.fixture(scope="module")
def solo():
    """A one-node cluster with one GPU and CPUs for more jobs than its MPS server takes clients."""
    with own_cluster("solo", ONE_GPU_LAYOUT, TEST_PORT + 90) as cluster:
        yield cluster


def test_sixty_one_unit_jobs_never_hold_more_slices_of_a_gpu_than_its_mps_server_takes(solo):
    job_ids = [submit(solo, "--gres=vgpu:1", script="sleep 40") for _ in range(60)]
    most_slices = most_running = most_units = 0
    told = set()  # jobs that waited with the client limit as their reason
    deadline = time.monotonic() + 480
    with engine_for(solo.database_url) as engine:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                slices = conn.scalar(sa.text(
                    "SELECT count(*) FROM placements WHERE state IN ('placed', 'pinned', 'running')"))
            mine = {j: d for j, d in jobs(solo).items() if j in job_ids}
            most_slices = max(most_slices, slices)
            most_running = max(most_running, sum(d["JobState"] == "RUNNING" for d in mine.values()))
            most_units = max([most_units, *gres_used(solo).values()])
            told |= {j for j, d in mine.items() if d["JobState"] == "PENDING" and FULL in d["AdminComment"]}
            if all(d["JobState"] in ENDED for d in mine.values()):
                break
            time.sleep(1)
    assert most_slices == 48  # reached, never passed: the limit held them back, not the units
    assert most_running <= 48 and most_units <= 48
    assert len(told) >= 12  # the twelve the GPU could not take at first, at least, were told why
    done = wait_for(solo, job_ids, timeout=30)
    assert all(d["JobState"] == "COMPLETED" for d in done.values())
