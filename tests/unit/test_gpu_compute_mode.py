"""A GPU's compute mode through the GPU adapter: NVML's calls on a real GPU, a root-owned file per
GPU on a simulated one; and the simulated GPU's contexts, which a fake CUDA client asks for as a
real one does (EXCLUSIVE_PROCESS: only the MPS server's context, none beside it)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from slurm_vgpu.adapters.gpus import (ComputeMode, ComputeModeRefused, InventoryError, NvmlInventory,
                                      SimulatedInventory)
from slurm_vgpu.mps import MpsControl, MpsError
from slurm_vgpu_dev.layout import simulated_gpu

EXCLUSIVE, DEFAULT = ComputeMode.EXCLUSIVE_PROCESS, ComputeMode.DEFAULT
NOBODY = 65534
BUSY = "all CUDA-capable devices are busy or unavailable"


@pytest.fixture
def node(tmp_path) -> SimulatedInventory:
    path = tmp_path / "n1.json"
    SimulatedInventory.write(path, "n1", [simulated_gpu("n1", i, "t4") for i in range(2)])
    path.parent.chmod(0o755)
    return SimulatedInventory(path)


def uuids(node: SimulatedInventory) -> list[str]:
    return [g.uuid for g in node.gpus()]


def test_a_simulated_gpu_is_default_until_root_sets_it_in_a_file_of_its_own(node):
    first, second = uuids(node)
    assert node.compute_mode(first) is DEFAULT
    node.set_compute_mode(first, EXCLUSIVE)
    assert (node.compute_mode(first), node.compute_mode(second)) == (EXCLUSIVE, DEFAULT)
    written = node.modes_dir / first
    assert written.stat().st_uid == 0 and stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE(node.modes_dir.stat().st_mode) == 0o755
    node.set_compute_mode(first, DEFAULT)
    assert node.compute_mode(first) is DEFAULT
    assert sorted(p.name for p in node.modes_dir.iterdir()) == [first]  # no temporary file left


def test_only_root_sets_a_simulated_gpus_mode(node, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    with pytest.raises(ComputeModeRefused, match="needs root"):
        node.set_compute_mode(uuids(node)[0], EXCLUSIVE)
    assert not node.modes_dir.exists()


def test_prologs_on_different_gpus_never_undo_each_others_mode(node):
    """Two writers at once, each on its own GPU, flipping it and ending on a mode of its own; a
    reader meanwhile sees a whole mode every time."""
    first, second = uuids(node)
    writer = ("import sys; from slurm_vgpu.adapters.gpus import *\n"
              f"gpu = SimulatedInventory({str(node.path)!r})\n"
              "for i in range(300): gpu.set_compute_mode(sys.argv[1], list(ComputeMode)[i % 2 * 2])\n"
              "gpu.set_compute_mode(sys.argv[1], ComputeMode[sys.argv[2]])")
    writers = [subprocess.Popen([sys.executable, "-c", writer, uuid, mode])
               for uuid, mode in ((first, "EXCLUSIVE_PROCESS"), (second, "DEFAULT"))]
    seen = set()
    while any(w.poll() is None for w in writers):
        seen |= {node.compute_mode(first), node.compute_mode(second)}
    assert [w.wait() for w in writers] == [0, 0]
    assert seen <= {DEFAULT, ComputeMode.PROHIBITED, EXCLUSIVE}
    assert (node.compute_mode(first), node.compute_mode(second)) == (EXCLUSIVE, DEFAULT)


def test_of_processes_racing_for_an_exclusive_gpu_one_gets_its_context(node):
    uuid = uuids(node)[0]
    node.set_compute_mode(uuid, EXCLUSIVE)
    racer = ("import os, sys, time; from slurm_vgpu.adapters.gpus import *\n"
             f"try: SimulatedInventory({str(node.path)!r}).hold_context({uuid!r}, os.getpid())\n"
             "except ContextRefused: sys.exit(3)\n"
             "time.sleep(60)")
    racers = [subprocess.Popen([sys.executable, "-c", racer]) for _ in range(6)]
    try:
        deadline = time.monotonic() + 60
        while sum(r.poll() is not None for r in racers) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        (holder,) = [r for r in racers if r.poll() is None]
        assert [r.returncode for r in racers if r is not holder] == [3] * 5
        assert node.context_holders(uuid) == [holder.pid]
    finally:
        for r in racers:
            r.kill()
            r.wait()


def test_a_context_left_by_a_killed_process_does_not_pass_to_the_next_owner_of_its_pid(node):
    """A process killed unclean leaves its context record; once its PID runs another process, the
    GPU must not count that one as holding a context. Modelled by ageing a live record's start time."""
    uuid = uuids(node)[0]
    node.set_compute_mode(uuid, EXCLUSIVE)
    node.hold_context(uuid, os.getpid())
    assert node.context_holders(uuid) == [os.getpid()]
    record = node.contexts_dir / uuid / str(os.getpid())
    record.write_text(f"{int(record.read_text()) - 1}\n")
    assert node.context_holders(uuid) == []
    node.hold_context(uuid, 1)  # another process gets the GPU
    assert node.context_holders(uuid) == [1]


class FakeNvml(types.ModuleType):
    """A stand-in for pynvml that models one GPU's compute mode, refusing a set as a GPU or a user
    without the right does (NVML_ERROR_NOT_SUPPORTED / NO_PERMISSION)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NoPermission(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self, refuse: type[Exception] | None = None):
        super().__init__("pynvml")
        self.mode, self.refuse = 0, refuse

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return uuid

    def nvmlDeviceGetComputeMode(self, handle):
        return self.mode

    def nvmlDeviceSetComputeMode(self, handle, mode):
        if self.refuse:
            raise self.refuse("Insufficient Permissions")
        self.mode = mode


def test_nvml_sets_and_reads_nvmls_compute_mode_values(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    NvmlInventory().set_compute_mode("GPU-x", EXCLUSIVE)
    assert nvml.mode == 3  # NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
    assert NvmlInventory().compute_mode("GPU-x") is EXCLUSIVE
    NvmlInventory().set_compute_mode("GPU-x", DEFAULT)
    assert nvml.mode == 0


@pytest.mark.parametrize("refusal", ["NVMLError_NoPermission", "NVMLError_NotSupported"])
def test_a_gpu_nvml_will_not_set_is_refused_by_name(monkeypatch, refusal):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(getattr(FakeNvml, refusal)))
    with pytest.raises(ComputeModeRefused, match="NVML refused compute mode EXCLUSIVE_PROCESS on GPU-x"):
        NvmlInventory().set_compute_mode("GPU-x", EXCLUSIVE)


def test_a_gpu_nvml_cannot_read_is_an_inventory_error(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    def lost(handle):
        raise nvml.NVMLError("GPU is lost")

    monkeypatch.setattr(nvml, "nvmlDeviceGetComputeMode", lost)
    with pytest.raises(InventoryError, match="cannot read the compute mode of GPU-x: GPU is lost"):
        NvmlInventory().compute_mode("GPU-x")


def fake_cuda(node: SimulatedInventory, uuid: str, ready: Path, **env: str) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
    return subprocess.Popen(
        [sys.executable, "-m", "slurm_vgpu_dev.fake_cuda", "--usage-dir", str(node.usage_dir), "--mib", "10",
         "--ready", str(ready)],
        env={**clean, "CUDA_VISIBLE_DEVICES": uuid, "CUDA_MPS_PIPE_DIRECTORY": "/nonexistent", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def started(client: subprocess.Popen, ready: Path) -> bool:
    """Whether the client got its GPU (wrote ``ready``) rather than exiting."""
    deadline = time.monotonic() + 30
    while client.poll() is None and not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return ready.exists()


@pytest.fixture
def mps(node, tmp_path):
    """The fake MPS control daemon of the node's first GPU, its servers holding that simulated GPU's context."""
    uuid = uuids(node)[0]
    daemon = MpsControl(f"{sys.executable} -m slurm_vgpu_dev.fake_mps --gpus {node.path.parent}", uuid,
                        tmp_path / "pipe", tmp_path / "log")
    daemon.ensure_running()
    yield daemon
    daemon.quit()


def test_outside_mps_an_exclusive_gpu_held_by_its_server_gives_a_client_no_context(node, mps, tmp_path):
    uuid = mps.gpu_uuid
    node.set_compute_mode(uuid, EXCLUSIVE)
    server = mps.ensure_server(os.getuid())
    assert node.context_holders(uuid) == [server]
    plain = fake_cuda(node, uuid, tmp_path / "plain")
    assert not started(plain, tmp_path / "plain")
    error = plain.stderr.read()
    assert plain.returncode != 0 and BUSY in error and "cudaErrorDevicesUnavailable" in error
    client = fake_cuda(node, uuid, tmp_path / "mps", CUDA_MPS_PIPE_DIRECTORY=str(mps.pipe_dir))
    try:
        assert started(client, tmp_path / "mps")
        assert node.context_holders(uuid) == [server]  # an MPS client runs in its server's context
    finally:
        client.terminate()
        client.wait()


def test_a_default_gpu_gives_a_client_outside_mps_its_own_context(node, mps, tmp_path):
    uuid = mps.gpu_uuid
    server = mps.ensure_server(os.getuid())
    client = fake_cuda(node, uuid, tmp_path / "plain")
    try:
        assert started(client, tmp_path / "plain")
        assert sorted(node.context_holders(uuid)) == sorted([server, client.pid])
    finally:
        client.terminate()
        client.wait()
    assert node.context_holders(uuid) == [server]


def test_an_mps_server_gets_no_context_on_an_exclusive_gpu_another_process_holds(node, mps, tmp_path):
    uuid = mps.gpu_uuid
    plain = fake_cuda(node, uuid, tmp_path / "plain")
    try:
        assert started(plain, tmp_path / "plain")
        node.set_compute_mode(uuid, EXCLUSIVE)
        with pytest.raises(MpsError, match="did not start"):
            mps.ensure_server(os.getuid())
    finally:
        plain.terminate()
        plain.wait()
