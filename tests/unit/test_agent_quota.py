"""Memory caps per job: the sum of a job's processes on a GPU against its cap; when over, its
processes end largest first until the rest fit, and nothing else is touched."""
from __future__ import annotations

import subprocess
import sys

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.mps import MpsControl
from slurm_vgpu.agent.observe import GpuView, NodeView, Process, Slice
from slurm_vgpu.agent.quota import Overuse, largest_first, over_cap, terminate
from slurm_vgpu.policy import SloClass

GPU = GpuRecord(0, "GPU-a", "NVIDIA A100", "a100", 108, 40960, "8.0")
OTHER = GpuRecord(1, "GPU-b", "NVIDIA A100", "a100", 108, 40960, "8.0")
FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"


def view(slices, processes) -> NodeView:
    return NodeView("n1", (GpuView(GPU, "up", None, True), GpuView(OTHER, "up", None, True)), tuple(slices),
                    tuple(processes))


def job(job_id: int, memory_mib: int | None) -> Slice:
    return Slice(job_id, "GPU-a", 0, 30, memory_mib, SloClass.THROUGHPUT, "running")


def test_processes_each_under_the_cap_are_over_it_together():
    """MPS's limit is per client: four processes of 1 GiB each under a 2 GiB cap pass it one by one."""
    processes = [Process(pid, "GPU-a", 1, 1024, None) for pid in (10, 11, 12, 13)]
    assert over_cap(view([job(1, 2048)], processes)) == [
        Overuse(1, "GPU-a", 2048, ((13, 1024), (12, 1024), (11, 1024), (10, 1024)), (13, 12))]


def test_the_largest_end_first_until_the_rest_fit():
    processes = [Process(10, "GPU-a", 1, 1000, None), Process(11, "GPU-a", 1, 3000, None),
                 Process(12, "GPU-a", 1, 500, None)]
    (over,) = over_cap(view([job(1, 2000)], processes))
    assert over.ended == (11,) and over.used_mib == 4500  # 1500 MiB left
    reason = over.reason()
    assert reason.startswith("processes of the job used 4500 MiB of GPU memory together "
                             "(11: 3000 MiB, 10: 1000 MiB, 12: 500 MiB), over the job's cap of 2000 MiB (--vgpu-mem)")
    assert reason.endswith("terminated 11, largest first until the rest fit")


def test_largest_first_ends_no_more_than_needed():
    assert largest_first(((1, 600), (2, 500), (3, 400)), 1500) == ()
    assert largest_first(((1, 600), (2, 500), (3, 400)), 1499) == (1,)
    assert largest_first(((1, 600), (2, 500), (3, 400)), 399) == (1, 2, 3)
    assert largest_first(((1, 600), (2, 500), (3, 400)), 0) == (1, 2, 3)


def test_only_jobs_over_their_own_cap_are_picked_each_gpu_on_its_own():
    slices = [job(1, 1024), job(2, 4096), job(3, None)]
    processes = [Process(10, "GPU-a", 1, 2048, None), Process(11, "GPU-a", 1, 512, None),
                 Process(20, "GPU-a", 2, 2048, None), Process(21, "GPU-b", 2, 3000, None),
                 Process(30, "GPU-a", 3, 30000, None), Process(40, "GPU-a", None, 30000, None)]
    assert over_cap(view(slices, processes)) == [Overuse(1, "GPU-a", 1024, ((10, 2048), (11, 512)), (10,))]


def test_processes_that_are_no_mps_client_are_killed_and_their_neighbour_is_not(tmp_path):
    control = MpsControl(FAKE, "GPU-a", tmp_path / "pipe", tmp_path / "log")
    control.ensure_running()
    offenders = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    neighbour = subprocess.Popen(["sleep", "60"])
    try:
        assert terminate(control, [p.pid for p in offenders]) == ["SIGKILL", "SIGKILL"]
        assert [p.wait(timeout=10) for p in offenders] == [-9, -9]
        assert neighbour.poll() is None
    finally:
        control.quit()
        neighbour.kill()
        neighbour.wait()
