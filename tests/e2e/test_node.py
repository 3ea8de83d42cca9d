"""The node path on a real Slurm: SPANK options checked at submit, the prolog's MPS slice, the
root-owned slice file, the task environment, device fencing with ConstrainDevices, the GPU's
compute mode, the epilog. The GPUs are simulated: their compute mode and contexts are modelled
beside the inventory, and the fake CUDA client asks for a context as a real one does."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest

from slurm_vgpu.adapters.gpus import ComputeMode, SimulatedInventory

from ..conftest import TEST_PORT, new_database, slurm, start_cluster, stop_cluster
from .jobs import ensure_user, submit, wait_for
from .node_helpers import (device_probe, env_lines, job_output, mps_state, node_config, node_gpus, output_option,
                           placement, wait_started)

pytestmark = pytest.mark.e2e

USER = "vgpu-node"
# One T4 alone on a node (slices of one user must meet there) and two A100s on another (fencing).
LAYOUT = """
[[node]]
name = "solo"
cpus = 8
gpus = { t4 = 1 }

[[node]]
name = "pair"
cpus = 8
gpus = { a100 = 2 }
"""
SLICE_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
              "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")


@pytest.fixture(scope="module")
def nodes():
    """Its own cluster, outside pytest's root-only tmp: the test user's jobs must reach the slice
    and pipe directories (0755, as /run/slurm-vgpu is on a real node)."""
    directory = Path(tempfile.mkdtemp(prefix="vgpu-node-test-", dir="/var/tmp"))
    directory.chmod(0o755)
    layout = directory / "layout.toml"
    layout.write_text(LAYOUT)
    cluster = start_cluster(directory, new_database(), layout=layout, port=TEST_PORT + 60)
    ensure_user(USER)
    yield cluster
    stop_cluster(cluster)


def print_slice(extra: str = "") -> str:
    return "env | grep -E '^(" + "|".join(SLICE_VARS) + ")='" + extra


def test_job_environment_holds_exactly_its_slice_whatever_the_user_exported(nodes):
    user_values = ("CUDA_VISIBLE_DEVICES=0,1,2,3", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
                   "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=80G", "CUDA_MPS_PIPE_DIRECTORY=/tmp/mine")
    out = slurm(nodes, "env", *user_values, "sbatch", "--parsable", output_option(nodes),
                "--gres=vgpu:a100:30", "--vgpu-mem=4G", "--vgpu-class=latency", "--wrap", print_slice(),
                user=USER).stdout
    job_id = int(out.strip())
    assert wait_for(nodes, [job_id])[job_id]["JobState"] == "COMPLETED"
    row = placement(nodes, job_id)
    gpu_dir = node_config(nodes).gpu_dir(row["gpu_uuid"])
    assert env_lines(job_output(nodes, job_id)) == {
        "CUDA_VISIBLE_DEVICES": row["gpu_uuid"],
        "CUDA_MPS_PIPE_DIRECTORY": str(gpu_dir / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(gpu_dir / "log"),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4096M",
    }
    assert row["state"] == "released" and row["started_at"] and row["ended_at"]
    state = mps_state(nodes, row["gpu_uuid"])
    uid = ensure_user(USER)
    assert f"start_server -uid {uid}" in state["commands"]
    assert any(c.endswith(" 30") and c.startswith("set_active_thread_percentage") for c in state["commands"])
    assert any(c.endswith(" 0 4096M") for c in state["commands"])
    assert state["servers"] == {}  # the epilog stopped the user's server with its last job


def test_two_jobs_of_one_user_on_one_gpu_share_the_users_server(nodes):
    first = submit(nodes, output_option(nodes), "--gres=vgpu:t4:30", script="sleep 4", user=USER)
    second = submit(nodes, output_option(nodes), "--gres=vgpu:t4:50", "--vgpu-mem=2G", script="sleep 4", user=USER)
    wait_started(nodes, [first, second])
    gpu = placement(nodes, first)["gpu_uuid"]
    assert placement(nodes, second)["gpu_uuid"] == gpu
    servers = mps_state(nodes, gpu)["servers"]
    assert len(servers) == 1
    (server,) = servers.values()
    # Caps apply per client, so the server is capped at the user's largest slice; each job's own
    # share comes from its client variables, which can only lower the server's.
    assert server["uid"] == ensure_user(USER) and server["active_thread_percentage"] == 50.0
    wait_for(nodes, [first, second])
    assert mps_state(nodes, gpu)["servers"] == {}


def test_slice_file_is_root_owned_and_read_only_to_the_job_user(nodes):
    slice_dir = node_config(nodes).slice_dir
    script = (f"f={slice_dir}/$SLURM_JOB_ID; stat -c 'owner=%U mode=%a' $f; "
              "if echo CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 >> $f; then echo wrote; else echo refused; fi; "
              "if mv $f $f.x; then echo moved; else echo kept; fi")
    job_id = submit(nodes, output_option(nodes), "--gres=vgpu:a100:10", script=script, user=USER)
    wait_for(nodes, [job_id])
    text = job_output(nodes, job_id)
    assert "owner=root mode=644" in text
    assert "refused" in text and "wrote" not in text
    assert "kept" in text and "moved" not in text
    assert not (slice_dir / str(job_id)).exists()  # the epilog removed it


def test_a_vgpu_job_reaches_its_own_gpu_device_and_no_other(nodes):
    devices = nodes.device_dir
    minors = [g["minor"] for g in node_gpus(nodes, "pair")]
    probe = device_probe(nodes)
    fenced = submit(nodes, output_option(nodes), "--gres=vgpu:a100:20", script=probe, user=USER)
    wait_for(nodes, [fenced])
    own = placement(nodes, fenced)["gpu_minor"]
    seen = env_lines(job_output(nodes, fenced))
    assert seen == {str(devices / f"nvidia{m}"): "allowed" if m == own else "denied" for m in minors}


def test_srun_steps_one_after_another_and_side_by_side_use_the_jobs_slice(nodes):
    """Every step of a vgpu job (the batch step, two srun steps in turn, two at once) gets the
    job's slice: its variables and its GPU's device node, no other."""
    devices = nodes.device_dir
    minors = [g["minor"] for g in node_gpus(nodes, "pair")]
    probe = device_probe(nodes)
    script = Path(nodes.dir) / "steps.sh"
    script.write_text("\n".join([
        "report() { (" + print_slice() + "; " + probe + ") | sed \"s/^/$1:/\"; }",
        # two steps meet: each marks its arrival and waits (30 s at most) for the other's
        "meet() { touch $D/$1; for i in $(seq 300); do [ -e $D/$2 ] && break; sleep 0.1; done; "
        "[ -e $D/$2 ] && echo $1:together=yes || echo $1:together=no; }",
        "D=$(mktemp -d); export D; export -f report meet",
        "report batch",
        "srun -n1 bash -c 'report first'", "srun -n1 bash -c 'report second'",
        # side by side: each takes one of the job's two tasks and half its memory
        "for s in 'left right' 'right left'; do srun -n1 --exact --mem=50M bash -c \"report ${s% *}; meet $s\" & done; wait",
        "report batch-end",  # on cgroup v1 each step's start had taken the GPU from the steps before
    ]) + "\n")
    script.chmod(0o644)
    job_id = submit(nodes, output_option(nodes), "-n2", "--mem=100M", "--gres=vgpu:a100:20", "--vgpu-mem=2G",
                    script=f"bash {script}", user=USER)
    assert wait_for(nodes, [job_id])[job_id]["JobState"] == "COMPLETED"
    row = placement(nodes, job_id)
    gpu_dir = node_config(nodes).gpu_dir(row["gpu_uuid"])
    expected = {
        "CUDA_VISIBLE_DEVICES": row["gpu_uuid"],
        "CUDA_MPS_PIPE_DIRECTORY": str(gpu_dir / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(gpu_dir / "log"),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "20",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2048M",
        **{str(devices / f"nvidia{m}"): "allowed" if m == row["gpu_minor"] else "denied" for m in minors},
    }
    text = job_output(nodes, job_id)
    steps = ("batch", "first", "second", "left", "right", "batch-end")
    seen: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in steps and "=" in rest:
            seen.setdefault(name, {}).update([rest.split("=", 1)])
    assert seen.keys() == set(steps), text
    for name, values in seen.items():
        assert values == {**expected, **({"together": "yes"} if name in ("left", "right") else {})}, text


def test_a_step_that_asks_for_a_slice_its_job_has_not_fails_with_a_reason(nodes):
    # sbatch refuses --vgpu-class without --gres=vgpu; an srun step inside a plain job can still
    # name it, and its tasks must not start as if they had a slice.
    job_id = submit(nodes, output_option(nodes), script="srun --vgpu-class=latency echo task-started",
                    user=USER)
    wait_for(nodes, [job_id])
    text = job_output(nodes, job_id)
    assert "task-started" not in text
    assert f"slurm-vgpu: job {job_id} has --vgpu-class/--vgpu-mem/--vgpu-profile/--vgpu-slo but no GPU slice on this node" in text


@pytest.mark.parametrize("options, message", [
    (["--vgpu-class=bogus"], "write --vgpu-class=latency, --vgpu-class=throughput or --vgpu-class=best-effort"),
    (["--vgpu-class=LATENCY"], "write --vgpu-class=latency"),
    (["--vgpu-class="], "write --vgpu-class=latency"),
    (["--vgpu-mem=0"], "write --vgpu-mem=SIZE"),
    (["--vgpu-mem=lots"], "write --vgpu-mem=SIZE"),
    (["--vgpu-mem=8X"], "write --vgpu-mem=SIZE"),
    (["--vgpu-mem=-8G"], "write --vgpu-mem=SIZE"),
    (["--vgpu-mem=8G4"], "write --vgpu-mem=SIZE"),
    (["--vgpu-mem=12345678901M"], "write --vgpu-mem=SIZE"),
    (["--gres=vgpu:0"], "write --gres=vgpu:N with 1 <= N <= 100"),
    (["--gres=vgpu:101"], "write --gres=vgpu:N with 1 <= N <= 100"),
    (["--gres=vgpu:h100:30"], "no GPU model 'h100' in this cluster; models: a100, t4"),
    (["--gres=vgpu:30", "--vgpu-mem=1T"], "fits no GPU here"),
    (["--vgpu-class=latency"], "--vgpu-class, --vgpu-mem, --vgpu-profile and --vgpu-slo describe a GPU slice; add --gres=vgpu:N"),
    (["--vgpu-mem=4G"], "--vgpu-class, --vgpu-mem, --vgpu-profile and --vgpu-slo describe a GPU slice; add --gres=vgpu:N"),
])
def test_bad_requests_fail_at_submit_saying_what_to_write(nodes, options, message):
    result = slurm(nodes, "sbatch", *options, "--wrap", "true", user=USER, check=False)
    assert result.returncode != 0, f"sbatch {options} was accepted"
    assert "slurm-vgpu: " in result.stderr and message in result.stderr


@pytest.mark.parametrize("command", [["srun"], ["salloc"]])
def test_srun_and_salloc_check_the_options_too(nodes, command):
    result = slurm(nodes, *command, "--vgpu-mem=eight", "true", user=USER, check=False)
    assert result.returncode != 0
    assert "slurm-vgpu: invalid --vgpu-mem='eight'" in result.stderr


def test_a_task_that_drops_its_mps_variables_gets_no_gpu_context_beside_its_server(nodes):
    """Outside MPS a CUDA client runs "as it normally would": the GPU, EXCLUSIVE_PROCESS while it
    carries slices, gives it no context beside the MPS server. Root's jobs: the fake client is
    this test's Python, which only root may run here."""
    gpu = SimulatedInventory(node_config(nodes).inventory_for("solo"))
    (uuid,) = [g.uuid for g in gpu.gpus()]
    client = f"{sys.executable} -m slurm_vgpu_dev.fake_cuda --usage-dir {gpu.usage_dir} --mib 10 --seconds"
    keeps = submit(nodes, output_option(nodes), "--gres=vgpu:t4:30", script=f"{client} 8")
    drops = submit(nodes, output_option(nodes), "--gres=vgpu:t4:30",
                   script=f"env -u CUDA_MPS_PIPE_DIRECTORY -u CUDA_MPS_LOG_DIRECTORY {client} 1")
    # only keeps: drops lives a second, and its epilog may remove its slice file before keeps starts
    wait_started(nodes, [keeps])
    assert gpu.compute_mode(uuid) is ComputeMode.EXCLUSIVE_PROCESS
    ended = wait_for(nodes, [keeps, drops])
    assert ended[drops]["JobState"] == "FAILED"
    assert "all CUDA-capable devices are busy or unavailable" in job_output(nodes, drops)
    assert "cudaErrorDevicesUnavailable" in job_output(nodes, drops)
    assert ended[keeps]["JobState"] == "COMPLETED" and "(MPS client)" in job_output(nodes, keeps)
    deadline = time.monotonic() + 30  # the last epilog on the GPU gives it back its DEFAULT mode
    while gpu.compute_mode(uuid) is not ComputeMode.DEFAULT:
        assert time.monotonic() < deadline, "the GPU stayed EXCLUSIVE_PROCESS after its last slice ended"
        time.sleep(0.2)
    assert not node_config(nodes).gpu_dir(uuid).joinpath("pipe", "nvidia-cuda-mps-control.pid").exists()
