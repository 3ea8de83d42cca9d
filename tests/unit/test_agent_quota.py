"""Memory caps per job: only the offending process is picked and terminated."""
from __future__ import annotations

import subprocess
import sys

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.mps import MpsControl
from slurm_vgpu.agent.observe import GpuView, NodeView, Process, Slice
from slurm_vgpu.agent.quota import Overuse, over_cap, terminate
from slurm_vgpu.policy import SloClass

GPU = GpuRecord(0, "GPU-a", "NVIDIA A100", "a100", 108, 40960, "8.0")
FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"


def test_only_processes_over_their_own_jobs_cap_are_picked():
    slices = (Slice(1, "GPU-a", 0, 30, 1024, SloClass.THROUGHPUT, "running"),
              Slice(2, "GPU-a", 0, 30, 4096, SloClass.THROUGHPUT, "running"),
              Slice(3, "GPU-a", 0, 30, None, SloClass.THROUGHPUT, "running"))
    processes = (Process(10, "GPU-a", 1, 2048, None), Process(11, "GPU-a", 1, 512, None),
                 Process(20, "GPU-a", 2, 2048, None), Process(30, "GPU-a", 3, 30000, None),
                 Process(40, "GPU-a", None, 30000, None))
    view = NodeView("n1", (GpuView(GPU, "up", None, True),), slices, processes)
    assert over_cap(view) == [Overuse(1, 10, "GPU-a", 2048, 1024)]
    assert "2048 MiB" in over_cap(view)[0].reason() and "cap of 1024 MiB" in over_cap(view)[0].reason()


def test_a_process_that_is_no_mps_client_is_killed_and_its_neighbour_is_not(tmp_path):
    control = MpsControl(FAKE, "GPU-a", tmp_path / "pipe", tmp_path / "log")
    control.ensure_running()
    try:
        offender = subprocess.Popen(["sleep", "60"])
        neighbour = subprocess.Popen(["sleep", "60"])
        assert terminate(control, offender.pid) == "SIGKILL"
        assert offender.wait(timeout=10) == -9
        assert neighbour.poll() is None
    finally:
        control.quit()
        neighbour.kill()
        neighbour.wait()
