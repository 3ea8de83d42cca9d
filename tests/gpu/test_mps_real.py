"""On a real GPU: the prolog's MPS steps start NVIDIA's control daemon for one GPU, start the user's
server with caps, and a CUDA client in the slice environment sees its share and cannot allocate past
its memory cap. Skipped without a GPU and nvidia-cuda-mps-control; everything started is stopped."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from slurm_vgpu.mps import GpuMps
from slurm_vgpu.config import Config
from slurm_vgpu.node import slice as slices

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(shutil.which("nvidia-cuda-mps-control") is None, reason="no nvidia-cuda-mps-control"),
]

SHARE, MEMORY_MIB = 30, 2048

CLIENT = """
import sys, torch
props = torch.cuda.get_device_properties(0)
print("sms", props.multi_processor_count)
small = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
print("small ok")
try:
    big = torch.empty(4 * 2**30, dtype=torch.uint8, device="cuda")
    print("big ok")
except RuntimeError as exc:
    print("big refused", str(exc).splitlines()[0])
"""


@pytest.fixture
def control(tmp_path, gpu):
    tmp_path.chmod(0o755)
    daemon = GpuMps.of(Config(run_dir=tmp_path, mps_control="nvidia-cuda-mps-control"), gpu.uuid).control
    yield daemon
    for pid in daemon.servers().values() if daemon.running() else ():
        daemon.shutdown_server(pid)
    daemon.quit()


def test_prolog_steps_start_a_capped_server_for_the_user(control):
    control.ensure_running()
    assert control.daemon_pid() is not None
    server = control.ensure_server(os.getuid())
    control.set_limits(server, SHARE, MEMORY_MIB)
    assert control.command(f"get_active_thread_percentage {server}") == [f"{SHARE:.1f}"]
    assert control.ensure_server(os.getuid()) == server


def test_a_client_in_the_slice_sees_its_share_and_its_memory_cap(control, gpu):
    pytest.importorskip("torch")
    control.ensure_running()
    control.set_limits(control.ensure_server(os.getuid()), SHARE, MEMORY_MIB)
    text = slices.render(slices.Slice(1, gpu.uuid, gpu.index, SHARE, MEMORY_MIB, control.pipe_dir, control.log_dir),
                         node_minors=[gpu.index], uvm_major=None)
    env = {**os.environ, **dict(line.split("=", 1) for line in text.splitlines()
                                 if line.startswith("CUDA_"))}
    env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = "100"  # a user raising it gets no more than the server's cap
    result = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert int(lines["sms"]) <= gpu.sm_count * (SHARE + 5) // 100
    assert lines["small"] == "ok"
    assert lines["big"].startswith("refused")
