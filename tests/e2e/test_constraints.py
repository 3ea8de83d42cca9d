"""--constraint on a real Slurm: the placement's reading of a constraint (which nodes a job of one
node may run on) agrees with Slurm's own (``sbatch --test-only -w NODE -C EXPR``) on each release,
and a vgpu job is placed only on a node whose features meet its constraint, waiting while that
node's GPU is taken rather than being pinned where Slurm would not start it."""
from __future__ import annotations

import pytest

from slurm_vgpu.adapters.features import satisfies

from ..conftest import TEST_PORT, own_cluster, slurm
from .jobs import job, submit, wait_for, wait_until

pytestmark = pytest.mark.e2e

# "plain" comes first in node order, so a placement blind to features would take its GPU.
LAYOUT = """
[[node]]
name = "plain"
cpus = 4
gpus = { t4 = 1 }

[[node]]
name = "fast"
cpus = 4
gpus = { t4 = 1 }
features = ["ib"]

[[node]]
name = "wide"
cpus = 4
gpus = { t4 = 1 }
features = ["nvme", "big"]
"""
FEATURES = {"plain": frozenset(), "fast": frozenset({"ib"}), "wide": frozenset({"nvme", "big"})}
EXPRESSIONS = ["ib", "nvme&big", "ib|nvme", "ib|nvme&big", "nvme|ib&big", "(ib|nvme)&big", "ib|(nvme&big)"]


@pytest.fixture(scope="module")
def featured():
    with own_cluster("features", LAYOUT, TEST_PORT + 110) as cluster:
        yield cluster


def slurm_would_run(cluster, expression: str, node: str) -> bool:
    """Slurm's own verdict: a plain one-node job of this constraint, tested on this node alone."""
    result = slurm(cluster, "sbatch", "--test-only", "-N1", "-w", node, "-C", expression, "--wrap", "true",
                   check=False)
    return result.returncode == 0


def test_the_placements_reading_of_a_constraint_is_slurms(featured):
    seen = {(e, n): (satisfies(e, FEATURES[n]), slurm_would_run(featured, e, n)) for e in EXPRESSIONS for n in FEATURES}
    assert {k: v for k, v in seen.items() if v[0] != v[1]} == {}, "(ours, Slurm's) where they differ"


def test_a_vgpu_job_goes_only_where_its_constraint_holds_and_waits_for_that_gpu(featured):
    first = submit(featured, "--gres=vgpu:60", "--constraint=ib", script="sleep 10")
    wait_for(featured, [first], states={"RUNNING"})
    assert job(featured, first)["NodeList"] == "fast"
    second = submit(featured, "--gres=vgpu:60", "--constraint=ib", script="true")
    wait_until("the second job's reason", lambda: "wait=" in job(featured, second)["AdminComment"])
    waiting = job(featured, second)
    assert waiting["JobState"] == "PENDING" and "vgpu-state=unplaced" in waiting["AdminComment"]  # never pinned elsewhere
    either = submit(featured, "--gres=vgpu:60", "--constraint=ib|big", script="true")
    done = wait_for(featured, [first, second, either])
    assert {j: (d["JobState"], d["NodeList"]) for j, d in done.items()} == {
        first: ("COMPLETED", "fast"), second: ("COMPLETED", "fast"), either: ("COMPLETED", "wide")}
