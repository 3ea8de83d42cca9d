"""Whole GPUs beside slices on a real Slurm: a job's --gres=gpu:1 or --gpus=1 gets a GPU that carries
no slice, natively (Slurm's gres/gpu: its device file, no MPS daemon, DEFAULT compute mode), and no
slice is placed on it while it runs. The GPUs are simulated (their compute mode modelled beside
the inventory, their device files made with mknod)."""
from __future__ import annotations

import re
import time

import pytest

from slurm_vgpu.adapters.gpus import ComputeMode, SimulatedInventory

from ..conftest import TEST_PORT, own_cluster, slurm
from .jobs import ensure_user, submit, submit_fails, wait_for, wait_until
from .node_helpers import (device_probe, env_lines, job_output, node_config, node_gpus, output_option, placement,
                           wait_started)

pytestmark = pytest.mark.e2e

USER = "vgpu-whole"
LAYOUT = """
[[node]]
name = "pair"
cpus = 8
gpus = { a100 = 2 }
"""


@pytest.fixture(scope="module")
def pair():
    ensure_user(USER)
    with own_cluster("whole", LAYOUT, TEST_PORT + 100) as cluster:
        yield cluster


def gres_in_use(cluster) -> dict[str, dict[str, int]]:
    """Slurm's GresUsed of the node: gres type -> {"gpu": whole GPUs, "vgpu": units}."""
    text = slurm(cluster, "scontrol", "show", "node", "-d", "pair").stdout
    used: dict[str, dict[str, int]] = {}
    for name, kind, count in re.findall(r"\b(v?gpu):(\w+):(\d+)", re.search(r"GresUsed=(\S+)", text).group(1)):
        used.setdefault(kind, {"gpu": 0, "vgpu": 0})[name] = int(count)
    return used


def never_shared(cluster) -> None:
    """No GPU is held whole by Slurm while it also carries vgpu units."""
    for kind, used in gres_in_use(cluster).items():
        assert not (used["gpu"] and used["vgpu"]), f"{kind} is given whole and as slices at once: {used}"


@pytest.mark.parametrize("ask", [["--gres=gpu:1"], ["--gpus=1"], ["--gres=gpu:a100:1"]])
def test_a_whole_gpu_job_gets_a_gpu_without_slices_and_slices_keep_off_it(pair, ask):
    inventory = SimulatedInventory(node_config(pair).inventory_for("pair"))
    devices = pair.device_dir
    minors = {g["uuid"]: g["minor"] for g in node_gpus(pair, "pair")}
    probe = device_probe(pair)
    first = submit(pair, output_option(pair), "--gres=vgpu:a100:30", script="sleep 12", user=USER)
    wait_started(pair, [first])
    sliced = placement(pair, first)["gpu_uuid"]

    whole = submit(pair, output_option(pair), *ask,
                   script=f"echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; {probe}; sleep 6", user=USER)
    wait_started(pair, [whole])
    row = placement(pair, whole)
    assert row["whole"] and row["share"] == 100 and row["memory_mib"] is None
    assert row["gpu_uuid"] != sliced
    assert inventory.compute_mode(row["gpu_uuid"]) is ComputeMode.DEFAULT  # no MPS on it
    assert not node_config(pair).gpu_dir(row["gpu_uuid"]).joinpath("pipe", "nvidia-cuda-mps-control.pid").exists()
    # a slice asked for while the whole GPU runs goes beside the other slice, not onto the whole GPU
    second = submit(pair, output_option(pair), "--gres=vgpu:a100:30", script="sleep 2", user=USER)
    wait_started(pair, [second])
    assert placement(pair, second)["gpu_uuid"] == sliced
    never_shared(pair)
    assert gres_in_use(pair)[row["gres_type"]] == {"gpu": 1, "vgpu": 0}

    ended = wait_for(pair, [first, whole, second])
    assert {ended[j]["JobState"] for j in (first, whole, second)} == {"COMPLETED"}
    seen = env_lines(job_output(pair, whole))
    assert seen.pop("CUDA_VISIBLE_DEVICES") != ""  # Slurm's own, from its gres/gpu
    assert seen == {str(devices / f"nvidia{m}"): "allowed" if uuid == row["gpu_uuid"] else "denied"
                    for uuid, m in minors.items()}
    assert placement(pair, whole)["state"] == "released"


def test_a_whole_gpu_job_waits_while_every_gpu_carries_a_slice(pair):
    # 60% each: one slice on each GPU (long enough to overlap: the GPU of the last test's whole job
    # may still be completing when they are placed)
    slices = [submit(pair, output_option(pair), "--gres=vgpu:a100:60", script="sleep 20", user=USER)
              for _ in range(2)]
    wait_started(pair, slices)
    assert len({placement(pair, j)["gpu_uuid"] for j in slices}) == 2
    whole = submit(pair, output_option(pair), "--gres=gpu:1", script="true", user=USER)
    assert wait_until("the whole-GPU job's reason", lambda: "whole GPU that carries no slice" in
                      slurm(pair, "scontrol", "show", "job", str(whole)).stdout)
    while slurm(pair, "squeue", "-h", "-j", ",".join(map(str, slices)), "-o", "%i").stdout.split():
        never_shared(pair)
        time.sleep(0.5)
    assert wait_for(pair, [whole])[whole]["JobState"] == "COMPLETED"


@pytest.mark.parametrize("options, message", [
    (["--gres=gpu:2"], "write --gres=gpu:N or --gpus=N with 1 <= N <= 1"),
    (["--gpus=2"], "write --gres=gpu:N or --gpus=N with 1 <= N <= 1"),
    (["--gres=gpu:1,vgpu:30"], "a job takes a slice or whole GPUs, not both"),
    (["--gres=gpu:1", "--vgpu-mem=8G"], "a whole GPU comes with all of its memory; drop --vgpu-mem"),
    (["--gres=gpu:a100_1:1"], "write --gres=gpu:a100:1 for any a100"),
    (["--gres=gpu:h100:1"], "no GPU model 'h100' in this cluster; models: a100"),
    (["--gpus-per-task=1", "-n1"], "whole GPUs are asked for per job or per node; write --gres=gpu:N or --gpus=N"),
    (["--gres=gpu:1", "--gpus=1"], "whole GPUs are asked for twice"),
])
def test_bad_whole_gpu_requests_fail_at_submit_saying_what_to_write(pair, options, message):
    said = submit_fails(pair, *options, user=USER)
    assert "slurm-vgpu: " in said and message in said
