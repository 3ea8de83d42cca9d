"""On a real GPU: the agent's NVML path sees a CUDA process with its memory (what quotas act on)
and the GPU's utilisation (what the SLO guard reads). Skipped without a GPU or without torch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from slurm_vgpu.adapters.gpus import NvmlInventory
from slurm_vgpu.agent.observe import GpuView, NodeView, Process, Slice
from slurm_vgpu.agent.quota import over_cap
from slurm_vgpu.policy import SloClass

pytestmark = pytest.mark.gpu

CLIENT = """
import sys, time, torch
block = torch.empty(768 * 2**20, dtype=torch.uint8, device="cuda")
x = torch.randn(4096, 4096, device="cuda")
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    x = x @ x
    x /= x.norm()
"""


@pytest.fixture
def client(gpu):
    pytest.importorskip("torch")
    process = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu.uuid})
    assert process.stdout.readline().strip() == "ready"
    yield process
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_nvml_reports_the_clients_memory_and_a_busy_gpu(gpu, client):
    nvml = NvmlInventory()
    ours = next(p for p in nvml.processes(gpu.uuid) if p.pid == client.pid)
    assert ours.used_mib >= 768
    for _ in range(50):  # NVML's utilisation is a sample over its last period
        if (nvml.utilization(gpu.uuid) or 0) > 0.1:
            break
        time.sleep(0.1)
    assert nvml.utilization(gpu.uuid) > 0.1
    view = NodeView("n", (GpuView(gpu, "up", None, False),),
                    (Slice(1, gpu.uuid, os.getuid(), 30, 512, SloClass.BEST_EFFORT, "running"),),
                    (Process(ours.pid, gpu.uuid, 1, ours.used_mib, ours.sm_util),))
    assert [pid for o in over_cap(view) for pid in o.ended] == [client.pid]
