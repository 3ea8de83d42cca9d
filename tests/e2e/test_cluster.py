"""The local cluster itself: real slurmctld and slurmd in their own UTS namespaces, vgpu jobs
running to completion on each GPU model, and `dev up` being safe to repeat."""
from __future__ import annotations

import pytest

from slurm_vgpu_dev import cluster as devcluster

from ..conftest import slurm
from .jobs import job, output, submit, submit_fails, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("model,node", [("h100", "node1"), ("a100", "node2"), ("t4", "node3")])
def test_a_vgpu_job_runs_to_completion_on_each_gpu_model(cluster, model, node):
    job_id = submit(cluster, f"--gres=vgpu:{model}:20", script="hostname")
    done = wait_for(cluster, [job_id])[job_id]
    assert done["JobState"] == "COMPLETED"
    assert done["NodeList"] == node
    assert output(cluster, job_id).strip() == node  # the job ran inside that node's UTS namespace
    assert done["TresPerNode"].startswith(f"gres:vgpu:{model}_") and done["TresPerNode"].endswith(":20")


def test_every_node_registers_its_simulated_gpus(cluster):
    nodes = slurm(cluster, "scontrol", "show", "node", "node3").stdout
    gres = [f"gpu:t4_{i}:1" for i in range(8)] + [f"vgpu:t4_{i}:100" for i in range(8)]  # Slurm's order
    assert "Gres=" + ",".join(gres) in nodes


def test_dev_up_twice_keeps_the_running_cluster(cluster):
    before = devcluster.status(cluster)
    state = devcluster._read_state(cluster)
    devcluster.up(cluster)
    assert devcluster._read_state(cluster)["services"] == state["services"]
    assert all(before.values())


@pytest.mark.parametrize(
    "gres,message",
    [
        ("vgpu:0", "1 <= N <= 100"),
        ("vgpu:101", "1 <= N <= 100"),
        ("vgpu:12.5", "whole percentage"),
        ("vgpu:h200:30", "no GPU model 'h200' in this cluster; models: a100, h100, t4"),
    ],
)
def test_bad_vgpu_requests_fail_at_submit(cluster, gres, message):
    assert message in submit_fails(cluster, f"--gres={gres}")


def test_jobs_without_vgpu_are_untouched(cluster):
    job_id = submit(cluster, script="hostname")
    done = wait_for(cluster, [job_id])[job_id]
    assert done["JobState"] == "COMPLETED"
    assert "vgpu" not in job(cluster, job_id).get("AdminComment", "")
