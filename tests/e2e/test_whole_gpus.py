"""Whole GPUs beside slices on a real Slurm: a job's --gres=gpu:N or --gpus=N gets N GPUs of one node
that carry no slice, natively (Slurm's gres/gpu: their device files, no MPS daemon, DEFAULT compute
mode), beside slices on the node's other GPUs, and no slice is placed on them while it runs. The GPUs are simulated (their compute mode modelled beside
the inventory, their device files made with mknod)."""
from __future__ import annotations

import re
import time

import psycopg
import pytest

from slurm_vgpu.adapters.gpus import ComputeMode, SimulatedInventory
from slurm_vgpu.node.store import connect

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

[[node]]
name = "quad"
cpus = 8
gpus = { l40s = 4 }
"""


@pytest.fixture(scope="module")
def pair():
    ensure_user(USER)
    with own_cluster("whole", LAYOUT, TEST_PORT + 100) as cluster:
        yield cluster


def gres_in_use(cluster, node: str = "pair") -> dict[str, dict[str, int]]:
    """Slurm's GresUsed of the node: gres type -> {"gpu": whole GPUs, "vgpu": units}."""
    text = slurm(cluster, "scontrol", "show", "node", "-d", node).stdout
    used: dict[str, dict[str, int]] = {}
    for name, kind, count in re.findall(r"\b(v?gpu):(\w+):(\d+)", re.search(r"GresUsed=(\S+)", text).group(1)):
        used.setdefault(kind, {"gpu": 0, "vgpu": 0})[name] = int(count)
    return used


def never_shared(cluster, node: str = "pair") -> None:
    """No GPU is held whole by Slurm while it also carries vgpu units."""
    for kind, used in gres_in_use(cluster, node).items():
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

    whole = submit(pair, output_option(pair), *ask, "--nodelist=pair",
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
    node_devices = {str(devices / f"nvidia{m}"): uuid for uuid, m in minors.items()}  # the other node's are not here
    assert {path: verdict for path, verdict in seen.items() if path in node_devices} == {
        path: "allowed" if uuid == row["gpu_uuid"] else "denied" for path, uuid in node_devices.items()}
    assert placement(pair, whole)["state"] == "released"


def test_a_whole_gpu_job_waits_while_every_gpu_carries_a_slice(pair):
    # 60% each: one slice on each GPU (long enough to overlap: the GPU of the last test's whole job
    # may still be completing when they are placed)
    slices = [submit(pair, output_option(pair), "--gres=vgpu:a100:60", script="sleep 20", user=USER)
              for _ in range(2)]
    wait_started(pair, slices)
    assert len({placement(pair, j)["gpu_uuid"] for j in slices}) == 2
    whole = submit(pair, output_option(pair), "--gres=gpu:1", "--nodelist=pair", script="true", user=USER)
    assert wait_until("the whole-GPU job's reason", lambda: "whole GPU that carries no slice" in
                      slurm(pair, "scontrol", "show", "job", str(whole)).stdout)
    while slurm(pair, "squeue", "-h", "-j", ",".join(map(str, slices)), "-o", "%i").stdout.split():
        never_shared(pair)
        time.sleep(0.5)
    assert wait_for(pair, [whole])[whole]["JobState"] == "COMPLETED"


def placements(cluster, job_id: int) -> list[dict]:
    """Every placement row of the job, with its GPU's gres type."""
    with connect(cluster.database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute("SELECT p.*, g.gres_type, g.node FROM placements p JOIN gpus g ON g.uuid = p.gpu_uuid "
                            "WHERE p.job_id = %s ORDER BY p.id", (job_id,)).fetchall()


def test_a_job_of_two_whole_gpus_starts_beside_slices_on_the_nodes_other_gpus(pair):
    inventory = SimulatedInventory(node_config(pair).inventory_for("quad"))
    minors = {g["uuid"]: g["minor"] for g in node_gpus(pair, "quad")}
    probe = device_probe(pair)
    sliced = [submit(pair, output_option(pair), "--gres=vgpu:l40s:60", script="sleep 15", user=USER)
              for _ in range(2)]
    wait_started(pair, sliced)
    sliced_gpus = {placement(pair, j)["gpu_uuid"] for j in sliced}
    assert len(sliced_gpus) == 2

    duo = submit(pair, output_option(pair), "--gres=gpu:l40s:2",
                 script=f"echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; {probe}; sleep 4", user=USER)
    wait_started(pair, [duo])
    rows = placements(pair, duo)
    taken = {r["gpu_uuid"] for r in rows}
    assert len(rows) == 2 and all(r["whole"] and r["share"] == 100 and r["node"] == "quad" for r in rows)
    assert taken == set(minors) - sliced_gpus  # the two GPUs beside the slices
    assert all(inventory.compute_mode(uuid) is ComputeMode.DEFAULT for uuid in taken)
    never_shared(pair, "quad")
    used = gres_in_use(pair, "quad")
    assert {r["gres_type"]: used[r["gres_type"]] for r in rows} == {r["gres_type"]: {"gpu": 1, "vgpu": 0} for r in rows}

    ended = wait_for(pair, [duo, *sliced])
    assert {ended[j]["JobState"] for j in (duo, *sliced)} == {"COMPLETED"}
    seen = env_lines(job_output(pair, duo))
    assert len(seen.pop("CUDA_VISIBLE_DEVICES").split(",")) == 2  # Slurm's own, from its gres/gpu
    quad_devices = {str(pair.device_dir / f"nvidia{m}"): uuid for uuid, m in minors.items()}
    assert {path: verdict for path, verdict in seen.items() if path in quad_devices} == {
        path: "allowed" if uuid in taken else "denied" for path, uuid in quad_devices.items()}
    assert {r["state"] for r in placements(pair, duo)} == {"released"}


def test_a_job_of_two_whole_gpus_waits_while_only_one_is_free_of_slices(pair):
    sliced = [submit(pair, output_option(pair), "--gres=vgpu:l40s:60", script="sleep 15", user=USER)
              for _ in range(3)]
    wait_started(pair, sliced)
    duo = submit(pair, output_option(pair), "--gres=gpu:l40s:2", script="true", user=USER)
    assert wait_until("the two-GPU job's reason", lambda: "needs 2 whole free GPUs" in
                      slurm(pair, "scontrol", "show", "job", str(duo)).stdout)
    assert placements(pair, duo) == []
    while slurm(pair, "squeue", "-h", "-j", ",".join(map(str, sliced)), "-o", "%i").stdout.split():
        never_shared(pair, "quad")
        time.sleep(0.5)
    assert wait_for(pair, [duo])[duo]["JobState"] == "COMPLETED"
    assert len(placements(pair, duo)) == 2


@pytest.mark.parametrize("options, message", [
    (["--gres=gpu:9"], "write --gres=gpu:N or --gpus=N with 1 <= N <= 8"),
    (["--gpus=9"], "write --gres=gpu:N or --gpus=N with 1 <= N <= 8"),
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
