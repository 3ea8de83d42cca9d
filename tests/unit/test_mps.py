"""The fake MPS control daemon speaks NVIDIA's stdin protocol, and the adapter drives it as it would
drive nvidia-cuda-mps-control: one daemon per GPU, one server per user, caps set on the server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from slurm_vgpu_dev import fake_mps
from slurm_vgpu.adapters.processes import start_ticks
from slurm_vgpu.mps import GpuMps, MpsControl, MpsError, MpsUnavailable
from slurm_vgpu.mps.control import children, process_uid
from slurm_vgpu.config import Config

FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"
UID = os.getuid()


@pytest.fixture
def control(tmp_path):
    daemon = MpsControl(FAKE, "GPU-test", tmp_path / "pipe", tmp_path / "log")
    daemon.ensure_running()
    yield daemon
    daemon.quit()


def state(control: MpsControl) -> dict:
    return json.loads((control.pipe_dir / fake_mps.STATE_FILE).read_text())


def test_daemon_runs_once_per_pipe_directory_with_its_gpu(control):
    pid = control.daemon_pid()
    control.ensure_running()
    assert control.daemon_pid() == pid
    assert state(control)["visible_devices"] == "GPU-test"
    again = subprocess.run([sys.executable, "-m", "slurm_vgpu_dev.fake_mps", "-d"], env=control.env(),
                           capture_output=True, text=True)
    assert again.returncode == 1 and "already running" in again.stderr


def test_one_server_per_user_owned_by_that_user(control):
    pid = control.ensure_server(UID)
    assert control.ensure_server(UID) == pid
    assert process_uid(pid) == UID
    assert control.servers() == {UID: pid}
    assert control.command("get_server_list") == [str(pid)]


def test_caps_are_set_on_the_server(control):
    pid = control.ensure_server(UID)
    control.set_limits(pid, 30, 8192)
    assert control.command(f"get_active_thread_percentage {pid}") == ["30.0"]
    assert control.command(f"get_device_pinned_mem_limit {pid} 0") == ["8192M"]
    server = state(control)["servers"][str(pid)]
    assert server["active_thread_percentage"] == 30.0 and server["device_pinned_mem_limit"] == {"0": "8192M"}


def test_no_memory_cap_leaves_the_server_uncapped(control):
    pid = control.ensure_server(UID)
    control.set_limits(pid, 100, None)
    assert control.command(f"get_device_pinned_mem_limit {pid} 0") == ["N/A"]


def test_replies_are_formatted_as_nvidias(control):
    assert control.command("get_default_active_thread_percentage") == ["100.0"]
    assert control.command("set_default_active_thread_percentage 25") == ["25.0"]
    assert control.command("get_default_active_thread_percentage") == ["25.0"]
    assert control.command("set_default_device_pinned_mem_limit 0 2G") == []
    assert control.command("get_default_device_pinned_mem_limit 0") == ["2G"]
    assert control.command("get_server_list") == []


@pytest.mark.parametrize("line, reply", [
    ("set_active_thread_percentage 1 30", "Server with PID 1 not found"),
    ("make_coffee", "Invalid command: make_coffee"),
    ("set_default_active_thread_percentage 0", "Invalid arguments"),
    ("set_default_active_thread_percentage 101", "Invalid arguments"),
    ("set_default_device_pinned_mem_limit 0 lots", "Invalid arguments"),
    ("start_server -gid 0", "Invalid arguments"),
])
def test_bad_commands_are_answered_not_obeyed(control, line, reply):
    (answer,) = control.command(line)
    assert answer.startswith(reply)
    assert state(control)["default_active_thread_percentage"] == 100.0


def test_a_refused_cap_is_an_error(control):
    with pytest.raises(MpsError, match="MPS refused"):
        control.set_limits(4_000_000, 30, None)


def test_shutdown_stops_the_server_process(control):
    pid = control.ensure_server(UID)
    control.shutdown_server(pid)
    assert control.servers() == {}
    assert process_uid(pid) is None


def test_a_killed_daemons_pid_file_is_not_read_as_the_next_process_with_its_pid(control, tmp_path):
    """A daemon killed with SIGKILL leaves its PID file, and PIDs come round again: the process that
    gets the PID next started after the file was written, and must not pass for the daemon, or the
    daemon would never be started again. Modelled with a process started after the file's time."""
    killed = control.daemon_pid()
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while start_ticks(killed) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert control.daemon_pid() is None and control.pid_file.exists()
    later = subprocess.Popen(["sleep", "60"])
    try:
        control.pid_file.write_text(f"{later.pid}\n")
        written = control.pid_file.stat().st_mtime
        os.utime(control.pid_file, (written - 60, written - 60))
        assert control.daemon_pid() is None
        os.utime(control.pid_file, (written, written))  # as the daemon that was started as it wrote it
        assert control.daemon_pid() == later.pid
    finally:
        later.kill()
        later.wait()
    control.pid_file.unlink()
    control.ensure_running()
    assert control.daemon_pid() not in (None, killed)


def test_quit_stops_servers_and_daemon(control):
    pid = control.ensure_server(UID)
    control.quit()
    assert control.daemon_pid() is None and process_uid(pid) is None
    assert not (control.pipe_dir / fake_mps.PID_FILE).exists()


def test_a_client_without_a_daemon_fails(tmp_path):
    daemon = MpsControl(FAKE, "GPU-x", tmp_path / "pipe", tmp_path / "log")
    with pytest.raises(MpsError, match="Cannot find MPS control daemon"):
        daemon.command("get_server_list")


def test_a_missing_binary_means_the_node_cannot_run_mps(tmp_path):
    daemon = MpsControl("/nonexistent/nvidia-cuda-mps-control", "GPU-x", tmp_path / "p", tmp_path / "l")
    with pytest.raises(MpsUnavailable, match="MpsControl="):
        daemon.ensure_running()


def test_a_pipe_directory_too_long_for_the_control_socket_is_refused_with_the_fix(tmp_path):
    """A Unix socket's path holds 107 bytes: a daemon started deeper could not listen (the fake
    did not; its prolog failed with "did not start"), so the node says which setting to shorten."""
    deep = tmp_path / ("d" * (110 - len(str(tmp_path))))
    daemon = MpsControl(FAKE, "GPU-x", deep / "pipe", deep / "log")
    with pytest.raises(MpsError, match="RunDir="):
        daemon.ensure_running()
    assert not (deep / "pipe").exists()


def test_each_gpu_has_its_own_directories_under_run_dir(tmp_path):
    config = Config(run_dir=tmp_path, mps_control=FAKE)
    first, second = GpuMps.of(config, "GPU-a").control, GpuMps.of(config, "GPU-b").control
    assert first.pipe_dir == tmp_path / "mps" / "GPU-a" / "pipe"
    assert first.log_dir == tmp_path / "mps" / "GPU-a" / "log"
    assert first.env()["CUDA_VISIBLE_DEVICES"] == "GPU-a"
    assert first.pipe_dir != second.pipe_dir


def test_the_daemon_logs_what_it_was_told(control):
    control.ensure_server(UID)
    log = (control.log_dir / "control.log").read_text()
    assert f"User did send start_server -uid {UID}" in log


def test_the_pipe_and_log_directories_are_open_to_the_gpus_users_only(control):
    from slurm_vgpu.mps.control import acl_users

    for directory in (control.pipe_dir, control.log_dir):
        assert oct(directory.stat().st_mode & 0o7777) == "0o1700"  # root's, closed, sticky
    control.open_to({1000, 1001})
    assert acl_users(control.pipe_dir) == acl_users(control.log_dir) == {1000, 1001}
    control.open_to({1001})  # 1000's last slice ended
    assert acl_users(control.pipe_dir) == acl_users(control.log_dir) == {1001}
    control.pipe_dir.chmod(0o1700)  # a chmod masks the named users out: read as "set it again"
    assert acl_users(control.pipe_dir) is None
    control.open_to({1001})
    assert acl_users(control.pipe_dir) == {1001}


def test_a_hung_daemon_lives_on_but_answers_nothing_and_kill_ends_it_with_its_servers(control):
    daemon, server = control.daemon_pid(), control.ensure_server(UID)
    assert control.answers(timeout=10)
    assert control.command("simulate_hang") == []  # fake only: it answers this, then nothing
    assert not control.answers(timeout=0.5)
    assert control.daemon_pid() == daemon  # the PID alone says it is healthy
    assert children(daemon) == [server]  # its servers are its children
    assert control.kill(daemon) == [server]
    assert control.daemon_pid() is None and not control.pid_file.exists()
    assert process_uid(server) is None or _state(server) == "Z"
    control.ensure_running()  # a new one starts where the wedged one was
    assert control.answers(timeout=10) and control.daemon_pid() != daemon


def test_a_daemon_whose_pipe_is_gone_does_not_answer(control):
    (control.pipe_dir / fake_mps.SOCKET).unlink()
    assert not control.answers(timeout=10)
    control.kill(control.daemon_pid())


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]
