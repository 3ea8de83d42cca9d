"""The NVML adapter's process list under MPS, against a stand-in pynvml module: it models NVML (no
GPU here), answering the calls NvmlInventory.processes makes with the lists a GPU under MPS gives:
the MPS server and a process outside MPS among the compute processes, the clients in the MPS list
(one of them in both lists too: the merge must count it once). The real NVML path runs in tests/gpu."""
from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from slurm_vgpu.adapters.gpus import GpuProcess, NvmlInventory

MIB = 1024 * 1024
SERVER, PLAIN, CLIENT, QUIET_CLIENT, GONE = 500, 600, 700, 701, 800


def fake_pynvml(compute, mps, names) -> ModuleType:
    """A pynvml module modelling one GPU's NVML answers; ``names`` as nvmlSystemGetProcessName
    gives them (a pid without a name has ended: NVML_ERROR_NOT_FOUND)."""
    module = ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def process_name(pid):
        if pid not in names:
            raise NVMLError("Not Found")
        return names[pid].encode()  # bytes, as older bindings return

    module.NVMLError = NVMLError
    module.nvmlInit = module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetHandleByUUID = lambda uuid: ("handle", uuid)
    module.nvmlDeviceGetProcessUtilization = lambda handle, since: [SimpleNamespace(pid=CLIENT, smUtil=40)]
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: [
        SimpleNamespace(pid=pid, usedGpuMemory=mib) for pid, mib in compute]
    module.nvmlDeviceGetMPSComputeRunningProcesses = lambda handle: [
        SimpleNamespace(pid=pid, usedGpuMemory=mib) for pid, mib in mps]
    module.nvmlSystemGetProcessName = process_name
    return module


def test_mps_clients_are_listed_once_and_the_mps_server_not_at_all(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(
        compute=[(SERVER, 300 * MIB), (PLAIN, 1000 * MIB), (CLIENT, 512 * MIB), (GONE, 10 * MIB)],
        mps=[(CLIENT, 1024 * MIB), (QUIET_CLIENT, None)],  # None: NVML had no reading
        names={SERVER: "/usr/bin/nvidia-cuda-mps-server", PLAIN: "/usr/bin/python3", CLIENT: "python3",
               QUIET_CLIENT: "python3"},
    ))
    assert NvmlInventory().processes("GPU-a") == [
        GpuProcess(PLAIN, 1000, None), GpuProcess(CLIENT, 1024, 0.4), GpuProcess(QUIET_CLIENT, 0, None),
        GpuProcess(GONE, 10, None),  # ended since it was listed: kept, no job will own it
    ]


@pytest.mark.parametrize("name", ["nvidia-cuda-mps-server", "/usr/local/cuda/bin/nvidia-cuda-mps-server"])
def test_the_server_is_known_by_its_name_alone(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(compute=[(SERVER, 300 * MIB)], mps=[], names={SERVER: name}))
    assert NvmlInventory().processes("GPU-a") == []
