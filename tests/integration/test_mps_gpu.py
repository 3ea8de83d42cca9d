"""One GPU's MPS, as the prolog, the epilog and the agent drive it: real Postgres for the slices,
the fake control daemon for MPS. What a job's user gets is the server's caps; what a node keeps
running is a daemon per GPU and a server per user with a slice there."""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from functools import partial

import pytest

from slurm_vgpu.mps import Caps, GpuMps, MpsControl
from slurm_vgpu.node import store

from .cli_support import gpu_uuid, insert_inventory, place

FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"
UID = os.getuid()
GPU = gpu_uuid("gpu01", 0)


@pytest.fixture
def gpu(clean_db, tmp_path):
    """Its directory is the test's own: RunDir/mps/<uuid>/pipe/control is too long a socket path here."""
    insert_inventory(clean_db)
    mps = GpuMps(MpsControl(FAKE, GPU, tmp_path / "pipe", tmp_path / "log"), tmp_path)
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
    assert gpu.control.servers() == {}
    assert gpu.control.running()  # the daemon stays up for the next job


def test_a_killed_daemon_is_restarted_with_its_running_slices_caps(gpu, clean_db, conn, database_url):
    place(clean_db, 3, "gpu01", 0, uid=UID, share=25, memory_mib=512)
    with gpu.serving(conn, UID, placement_id(conn, 3)):
        pass
    killed, orphan = gpu.control.daemon_pid(), gpu.control.servers()[UID]
    try:
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while gpu.control.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gpu.restart_if_dead({UID}, partial(store.connect, database_url))
        assert gpu.control.daemon_pid() not in (None, killed)
        assert caps(gpu) == ("25.0", "512M")
        assert not gpu.restart_if_dead({UID}, never)
    finally:
        os.kill(orphan, signal.SIGKILL)  # the killed daemon's server outlives it


def test_a_daemon_is_restarted_where_its_pid_file_is_left_and_never_started_elsewhere(gpu):
    assert not gpu.restart_if_dead(set(), never)
    assert not gpu.control.running()
    gpu.control.pipe_dir.mkdir(parents=True)
    gpu.control.pid_file.write_text("4194304\n")  # it was started and did not quit
    assert gpu.restart_if_dead(set(), never)
    assert gpu.control.running()


def test_only_servers_of_users_without_an_active_slice_are_stopped(gpu, clean_db, conn, database_url):
    assert gpu.stop_idle(never) == []  # no daemon: nothing asked, nothing read
    place(clean_db, 4, "gpu01", 0, uid=UID, share=10, state="placed")
    with gpu.serving(conn, UID, placement_id(conn, 4)):
        pass
    connect = partial(store.connect, database_url)
    assert gpu.stop_idle(connect) == []  # placed counts: its prolog may be about to run
    end(conn, 4)
    assert gpu.stop_idle(connect) == [UID]
    assert gpu.control.servers() == {}
