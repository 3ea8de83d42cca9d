"""One GPU's MPS, as the prolog, the epilog and the agent drive it: real Postgres for the slices,
the fake control daemon for MPS, a simulated GPU (its compute mode and contexts modelled in files
beside its inventory). What a job's user gets is the server's caps; what a node keeps running is a
daemon per GPU, EXCLUSIVE_PROCESS while it runs, and a server per user with a slice there."""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from functools import partial

import pytest

from slurm_vgpu.adapters.gpus import ComputeMode, ComputeModeRefused, SimulatedInventory
from slurm_vgpu.mps import Caps, GpuMps, MpsControl, MpsError
from slurm_vgpu.node import store
from slurm_vgpu_dev.layout import simulated_gpu

from .cli_support import INVENTORY, gpu_uuid, insert_inventory, place

UID = os.getuid()
GPU = gpu_uuid("gpu01", 0)
EXCLUSIVE, DEFAULT = ComputeMode.EXCLUSIVE_PROCESS, ComputeMode.DEFAULT


class SimulatedGpu(SimulatedInventory):
    """The simulated GPU, noting each compute mode set on it and whether its control daemon ran then."""

    def __init__(self, path, pipe_dir):
        super().__init__(path)
        self.daemon = MpsControl("true", GPU, pipe_dir, pipe_dir)
        self.modes_set: list[tuple[str, bool]] = []

    def set_compute_mode(self, uuid: str, mode: ComputeMode) -> None:
        self.modes_set.append((mode.name, self.daemon.running()))
        super().set_compute_mode(uuid, mode)


class Unsettable(SimulatedGpu):
    """A GPU whose compute mode cannot be set (NVML: NoPermission or NotSupported)."""

    def set_compute_mode(self, uuid: str, mode: ComputeMode) -> None:
        raise ComputeModeRefused(f"NVML refused compute mode {mode.name} on {uuid}: Not Supported")


@pytest.fixture
def device(tmp_path):
    path = tmp_path / "gpu01.json"
    SimulatedInventory.write(path, "gpu01", [simulated_gpu("gpu01", 0, INVENTORY["gpu01"][0])])
    return SimulatedGpu(path, tmp_path / "pipe")


def gpu_mps(tmp_path, device, exclusive: bool = True) -> GpuMps:
    """Its directory is the test's own: RunDir/mps/<uuid>/pipe/control is too long a socket path here.
    The fake daemon's servers hold the simulated GPU's context (``--gpus``)."""
    fake = f"{sys.executable} -m slurm_vgpu_dev.fake_mps --gpus {tmp_path}"
    return GpuMps(MpsControl(fake, GPU, tmp_path / "pipe", tmp_path / "log"), tmp_path, device, exclusive)


@pytest.fixture
def gpu(clean_db, tmp_path, device):
    insert_inventory(clean_db)
    mps = gpu_mps(tmp_path, device)
    yield mps
    mps.control.quit()


@pytest.fixture
def conn(database_url):
    with store.connect(database_url) as connection:
        yield connection


def placement_id(conn, job_id: int) -> int:
    return conn.execute("SELECT id FROM placements WHERE job_id = %s", (job_id,)).fetchone()[0]


def end(conn, job_id: int) -> None:
    conn.execute("UPDATE placements SET state = 'released' WHERE job_id = %s", (job_id,))


def caps(gpu: GpuMps, uid: int = UID) -> tuple[str, str]:
    server = gpu.control.servers()[uid]
    (share,) = gpu.control.command(f"get_active_thread_percentage {server}")
    (memory,) = gpu.control.command(f"get_device_pinned_mem_limit {server} 0")
    return share, memory


def locked(gpu: GpuMps) -> bool:
    """Whether a prolog, epilog or agent step holds the GPU now."""
    with open(gpu.directory / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def never(*_):
    raise AssertionError("no database read expected")


def test_a_starting_job_gets_its_users_server_capped_to_the_largest_slice_while_the_gpu_is_held(gpu, clean_db, conn):
    place(clean_db, 1, "gpu01", 0, uid=UID, share=20, memory_mib=1024)
    place(clean_db, 2, "gpu01", 0, uid=UID, share=40, memory_mib=2048, state="pinned")
    with gpu.serving(conn, UID, placement_id(conn, 2)):
        assert gpu.control.running()
        assert caps(gpu) == ("40.0", "2048M")
        assert locked(gpu)  # the prolog marks its placement running before anyone reads the slices
    assert not locked(gpu)


def test_an_ending_job_lowers_its_users_server_to_the_slices_left_then_stops_it(gpu, clean_db, conn):
    place(clean_db, 1, "gpu01", 0, uid=UID, share=30, memory_mib=1024)
    place(clean_db, 2, "gpu01", 0, uid=UID, share=60, memory_mib=None)
    with gpu.serving(conn, UID, placement_id(conn, 2)):
        pass
    assert caps(gpu) == ("60.0", "N/A")  # one slice without a memory cap: the server has none
    end(conn, 2)
    assert gpu.job_ended(conn, UID) == Caps(30, 1024)
    assert caps(gpu) == ("30.0", "1024M")
    end(conn, 1)
    assert gpu.job_ended(conn, UID) is None
    assert not gpu.control.running()  # the GPU carries no slice: its daemon and servers are gone
    assert gpu.gpus.compute_mode(GPU) is DEFAULT


def test_the_gpu_is_exclusive_before_its_daemon_starts_and_default_after_it_quits(gpu, device, clean_db, conn):
    place(clean_db, 1, "gpu01", 0, uid=UID, share=30)
    place(clean_db, 2, "gpu01", 0, uid=UID, share=30, state="placed")
    assert device.compute_mode(GPU) is DEFAULT
    with gpu.serving(conn, UID, placement_id(conn, 1)):
        assert device.compute_mode(GPU) is EXCLUSIVE
        assert device.context_holders(GPU) == [gpu.control.servers()[UID]]
    assert device.modes_set == [("EXCLUSIVE_PROCESS", False)]
    end(conn, 1)
    gpu.job_ended(conn, UID)
    assert gpu.control.running() and device.compute_mode(GPU) is EXCLUSIVE  # job 2's slice is placed here
    end(conn, 2)
    gpu.job_ended(conn, UID)
    assert device.modes_set == [("EXCLUSIVE_PROCESS", False), ("DEFAULT", False)]
    assert device.context_holders(GPU) == []


def test_a_whole_gpu_is_handed_over_without_mps_and_in_default_mode(gpu, device, clean_db, conn, database_url):
    """A whole-GPU job's prolog after the GPU's last slice ended but its daemon stayed (an epilog
    that did not run): the daemon is quit and the mode DEFAULT again before the job is marked
    running; and the agent starts no daemon for the whole GPU's running placement."""
    place(clean_db, 1, "gpu01", 0, uid=UID, share=30)
    with gpu.serving(conn, UID, placement_id(conn, 1)):
        pass
    end(conn, 1)
    place(clean_db, 2, "gpu01", 0, uid=UID, share=100, state="pinned", whole=True)
    with gpu.handed_over_whole(conn):
        assert locked(gpu)
        assert not gpu.control.running() and device.compute_mode(GPU) is DEFAULT
    conn.execute("UPDATE placements SET state = 'running' WHERE job_id = 2")
    assert gpu.stop_idle(partial(store.connect, database_url)) == []
    assert not gpu.restart_if_dead(set(), never)  # the agent's running uids leave whole GPUs out


def test_a_gpu_that_carries_a_slice_is_not_handed_over_whole(gpu, clean_db, conn):
    place(clean_db, 1, "gpu01", 0, uid=UID, share=30)
    with gpu.serving(conn, UID, placement_id(conn, 1)):
        pass
    with pytest.raises(MpsError, match="carries slices of uids"):
        with gpu.handed_over_whole(conn):
            pass
    assert gpu.control.running()  # the slice keeps its server


def test_a_gpu_whose_mode_cannot_be_set_fails_the_start_unless_the_admin_opted_out(clean_db, tmp_path, device, conn):
    insert_inventory(clean_db)
    place(clean_db, 1, "gpu01", 0, uid=UID, share=30)
    refusing = gpu_mps(tmp_path, Unsettable(device.path, tmp_path / "pipe"))
    with pytest.raises(MpsError, match="Not Supported.*ExclusiveComputeMode=no"):
        with refusing.serving(conn, UID, placement_id(conn, 1)):
            pass
    assert not refusing.control.running()
    weaker = gpu_mps(tmp_path, Unsettable(device.path, tmp_path / "pipe"), exclusive=False)
    try:
        with weaker.serving(conn, UID, placement_id(conn, 1)):
            pass
        assert UID in weaker.control.servers() and device.compute_mode(GPU) is DEFAULT
    finally:
        weaker.control.quit()


def test_a_gpu_in_use_outside_mps_is_not_made_exclusive(gpu, device, clean_db, conn):
    place(clean_db, 1, "gpu01", 0, uid=UID, share=30)
    device.report_usage(GPU, os.getpid(), used_mib=100, sm_util=0.0)  # a process holding the GPU
    with pytest.raises(MpsError, match=f"in use outside MPS \\(pid {os.getpid()}\\)"):
        with gpu.serving(conn, UID, placement_id(conn, 1)):
            pass
    assert device.compute_mode(GPU) is DEFAULT and not gpu.control.running()


def test_a_killed_daemon_is_restarted_with_its_running_slices_caps(gpu, clean_db, conn, database_url):
    place(clean_db, 3, "gpu01", 0, uid=UID, share=25, memory_mib=512)
    with gpu.serving(conn, UID, placement_id(conn, 3)):
        pass
    killed = gpu.control.daemon_pid()
    os.kill(killed, signal.SIGKILL)  # its server ends with it, and gives up the GPU's context
    deadline = time.monotonic() + 10
    while (gpu.control.running() or gpu.gpus.context_holders(GPU)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gpu.restart_if_dead({UID}, partial(store.connect, database_url))
    assert gpu.control.daemon_pid() not in (None, killed)
    assert caps(gpu) == ("25.0", "512M")
    assert gpu.gpus.compute_mode(GPU) is EXCLUSIVE
    assert not gpu.restart_if_dead({UID}, never)


def test_a_daemon_is_restarted_where_its_pid_file_is_left_and_a_slice_is_active(gpu, device, clean_db, database_url):
    assert not gpu.restart_if_dead(set(), never)
    assert not gpu.control.running()
    gpu.control.pipe_dir.mkdir(parents=True)
    gpu.control.pid_file.write_text("4194304\n")  # it was started and did not quit
    place(clean_db, 5, "gpu01", 0, uid=UID, share=10, state="pinned")  # its prolog ran since the agent looked
    assert gpu.restart_if_dead(set(), partial(store.connect, database_url))
    assert gpu.control.running()
    assert device.modes_set == [("EXCLUSIVE_PROCESS", False)]


def test_a_dead_daemon_of_a_gpu_without_slices_is_not_restarted_and_the_gpu_is_default_again(gpu, device,
                                                                                                 database_url):
    device.set_compute_mode(GPU, EXCLUSIVE)
    gpu.control.pipe_dir.mkdir(parents=True)
    gpu.control.pid_file.write_text("4194304\n")
    assert not gpu.restart_if_dead(set(), partial(store.connect, database_url))
    assert not gpu.control.running() and not gpu.control.pid_file.exists()
    assert device.compute_mode(GPU) is DEFAULT


def test_only_servers_of_users_without_an_active_slice_are_stopped(gpu, clean_db, conn, database_url):
    assert gpu.stop_idle(never) == []  # no daemon: nothing asked, nothing read
    place(clean_db, 4, "gpu01", 0, uid=UID, share=10, state="placed")
    with gpu.serving(conn, UID, placement_id(conn, 4)):
        pass
    connect = partial(store.connect, database_url)
    assert gpu.stop_idle(connect) == []  # placed counts: its prolog may be about to run
    end(conn, 4)
    assert gpu.stop_idle(connect) == [UID]
    assert not gpu.control.running() and gpu.gpus.compute_mode(GPU) is DEFAULT  # no slice left on the GPU


def defaults(gpu: GpuMps) -> tuple[str, str]:
    """The limits a server starts with before it gets its own (one a client's connect starts)."""
    (share,) = gpu.control.command("get_default_active_thread_percentage")
    (memory,) = gpu.control.command("get_default_device_pinned_mem_limit 0")
    return share, memory


def test_a_server_a_client_starts_before_its_caps_are_set_starts_capped(gpu, clean_db, conn, database_url):
    """The pipes open to a GPU's user before the user's server has its caps: a client that connects
    in between (a running job's, reconnecting after a restart) makes the daemon start the server
    with the daemon's default limits, so those are the caps, never MPS's own 100% and no memory cap."""
    place(clean_db, 1, "gpu01", 0, uid=UID, share=20, memory_mib=1024)
    place(clean_db, 2, "gpu01", 0, uid=UID, share=40, memory_mib=2048, state="pinned")
    with gpu.serving(conn, UID, placement_id(conn, 2)):
        assert defaults(gpu) == ("40.0", "2048M") == caps(gpu)
    end(conn, 2)
    gpu.control.kill(gpu.control.daemon_pid())
    assert gpu.restart_if_dead({UID}, partial(store.connect, database_url))
    assert defaults(gpu) == ("20.0", "1024M") == caps(gpu)
