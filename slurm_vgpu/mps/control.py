"""MPS, through its control binary: one control daemon per GPU, each with its own pipe and log dirs.

The same code drives NVIDIA's ``nvidia-cuda-mps-control`` and the fake one
(``python -m slurm_vgpu_dev.fake_mps``); ``Config.mps_control`` names which. Commands go to the
binary's stdin in client mode, one command per run, so each reply is read on its own.

Limits are set on the *server* (one per Unix user per GPU): a client's ``CUDA_MPS_*`` variables can
only lower them, so the server's caps are what holds. Where a GPU's daemon and servers live and when
they start, stop or get caps is :mod:`slurm_vgpu.mps.gpu`'s.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..adapters.processes import started_at
from ..contract import mps_size

PID_FILE = "nvidia-cuda-mps-control.pid"
CONTROL_SOCKET = "control"  # the daemon's socket in its pipe directory, as the real one names it
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, its NUL included
_BOOT_TIME_GRAIN = 1.0  # a process's start time is known to the second (the kernel's boot time is)


class MpsError(RuntimeError):
    """The control daemon misbehaved or refused a command."""


class MpsUnavailable(MpsError):
    """This node cannot run MPS at all (binary missing): the node is broken, not the job."""


_ACL_USER, _ACL_MASK = 0x02, 0x10  # tags of linux/posix_acl.h, in the xattr's little-endian entries


def acl_users(directory: Path) -> set[int] | None:
    """The users a directory's access ACL names, each with the full rwx that :meth:`MpsControl.open_to`
    gives and a full mask (None when it has no ACL or another shape: it is then set afresh)."""
    try:
        raw = os.getxattr(directory, "system.posix_acl_access")
    except OSError:
        return None
    entries = [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]
    if any(tag == _ACL_MASK and perm != 7 for tag, perm, _ in entries):
        return None
    users = [(perm, uid) for tag, perm, uid in entries if tag == _ACL_USER]
    return {uid for perm, uid in users} if all(perm == 7 for perm, _ in users) else None


@dataclass(frozen=True)
class MpsControl:
    """The control daemon of one GPU. ``binary`` may carry arguments (``python -m ...``)."""

    binary: str
    gpu_uuid: str
    pipe_dir: Path
    log_dir: Path
    # A wedged control daemon is a broken node; a slow answer under a burst of job starts is not
    # (seen on 2 cores: ~40 prologs at once pushed single commands past 5 s and drained a node).
    timeout: float = 30.0

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CUDA_VISIBLE_DEVICES": self.gpu_uuid,
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir),
        }

    def argv(self, *args: str) -> list[str]:
        argv = shlex.split(self.binary)
        if not argv or shutil.which(argv[0]) is None:
            raise MpsUnavailable(
                f"MPS control binary {self.binary!r} not found; install the NVIDIA driver's "
                "nvidia-cuda-mps-control or set MpsControl= in slurm-vgpu.conf"
            )
        return [*argv, *args]

    def running(self) -> bool:
        """Whether the control daemon's process lives: every caller asks here, so how it is told
        (today the PID file) can change in one place. A live daemon may still be wedged: whether it
        answers is :meth:`answers`'s, a command each time, too dear for every prolog step."""
        return self.daemon_pid() is not None

    @property
    def pid_file(self) -> Path:
        """Written by the daemon when it starts, removed when it quits."""
        return self.pipe_dir / PID_FILE

    def daemon_pid(self) -> int | None:
        """The control daemon's PID when it runs: from its PID file, and only while that PID runs a
        process that started before the file was written. A daemon that was killed leaves its file,
        and its PID may run another process since: the daemon must then be started again, not
        taken for running."""
        try:
            pid = int(self.pid_file.read_text().strip())
            written = self.pid_file.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return None
        started = started_at(pid)
        if started is None or started > written + _BOOT_TIME_GRAIN:
            return None
        return pid

    def ensure_running(self) -> None:
        """Start the daemon (``-d``) unless it runs; its directories are root's, closed to every
        user until :meth:`open_to` lets that GPU's users in."""
        if self.running():
            return
        socket = self.pipe_dir / CONTROL_SOCKET
        if len(os.fsencode(socket)) > SOCKET_PATH_MAX:
            raise MpsError(f"the MPS control socket {socket} is longer than a Unix socket may be "
                           f"({SOCKET_PATH_MAX} bytes): the daemon could not listen there; set RunDir= in "
                           "slurm-vgpu.conf to a shorter directory")
        for directory in (self.pipe_dir, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o1700)
        result = subprocess.run(
            self.argv("-d"), env=self.env(), capture_output=True, text=True, timeout=self.timeout,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        if result.returncode != 0:
            raise MpsError(f"{self.binary} -d failed for {self.gpu_uuid}: {_output(result)}")
        deadline = time.monotonic() + self.timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise MpsError(f"MPS control daemon for {self.gpu_uuid} wrote no PID file in {self.pipe_dir}")
            time.sleep(0.01)

    def open_to(self, uids: Iterable[int]) -> None:
        """Let exactly ``uids`` (the users with a slice on this GPU) into the pipe and log
        directories, by POSIX ACL. A client of any other user that reached the pipes would make the
        daemon retire the owner's server and start its own with default (uncapped) limits. The
        servers run as their user and write there, hence rwx; the sticky bit keeps a user from
        removing files that are not theirs (the daemon's sockets)."""
        wanted = set(uids)
        entries = ",".join(["u::rwx", "g::---", "o::---", "m::rwx", *(f"u:{uid}:rwx" for uid in sorted(wanted))])
        for directory in (self.pipe_dir, self.log_dir):
            if acl_users(directory) == wanted:
                continue  # as it is (every prolog asks; most change nothing)
            if shutil.which("setfacl") is None:
                raise MpsUnavailable("setfacl not found; install the acl package (MPS directories are opened "
                                     "per user by ACL)")
            result = subprocess.run(["setfacl", "--set", entries, str(directory)], capture_output=True, text=True)
            if result.returncode != 0:
                raise MpsError(f"setfacl on {directory} failed: {_output(result)}")

    def command(self, line: str, timeout: float | None = None) -> list[str]:
        """Send one command; return the reply's non-empty lines. Raises
        :class:`subprocess.TimeoutExpired` past ``timeout`` seconds (default :attr:`timeout`)."""
        result = subprocess.run(
            self.argv(), input=line + "\n", env=self.env(), capture_output=True, text=True,
            timeout=self.timeout if timeout is None else timeout,
        )
        if result.returncode != 0:
            raise MpsError(f"MPS command {line!r} for {self.gpu_uuid} failed: {_output(result)}")
        return [r.strip() for r in result.stdout.splitlines() if r.strip()]

    def answers(self, timeout: float) -> bool:
        """Whether the running daemon answers a question (``get_server_list``) within ``timeout``
        seconds; a refusal counts as no answer (its pipe is gone while its process lives). A binary
        that is missing is no answer about the daemon: :class:`MpsUnavailable` is raised."""
        try:
            self.command("get_server_list", timeout=timeout)
        except MpsUnavailable:
            raise
        except (MpsError, subprocess.TimeoutExpired):
            return False
        return True

    def kill(self, daemon_pid: int) -> list[int]:
        """Kill a daemon that no longer answers (``quit`` would not be heard) and its servers: they
        are its children, read from /proc while the daemon is stopped (SIGSTOP), so it neither
        starts another nor reaps one, and no PID is reused before it is killed. The PID file is
        removed, as ``quit`` would; returns the servers' PIDs once they and the daemon have ended (a
        server killed but not yet gone still holds its GPU context, which a restarted daemon's new
        server would not get on an EXCLUSIVE_PROCESS GPU)."""
        try:
            os.kill(daemon_pid, signal.SIGSTOP)
        except ProcessLookupError:
            return []
        servers = children(daemon_pid)
        for pid in [*servers, daemon_pid]:
            with contextlib.suppress(ProcessLookupError):  # a child of the stopped daemon stays a zombie
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + self.timeout
        while left := [pid for pid in [daemon_pid, *servers] if not _ended(pid)]:  # sockets, pipes, contexts closed
            if time.monotonic() > deadline:
                raise MpsError(f"MPS control daemon {daemon_pid} of {self.gpu_uuid} or its servers outlived SIGKILL "
                               f"(pid {', '.join(map(str, left))})")
            time.sleep(0.01)
        self.pid_file.unlink(missing_ok=True)
        return servers

    def servers(self) -> dict[int, int]:
        """Running servers as {uid: pid}; the owner is read from /proc, as for any process."""
        owners = {}
        for text in self.command("get_server_list"):
            uid = process_uid(int(text)) if text.isdigit() else None
            if uid is not None:
                owners[uid] = int(text)
        return owners

    def ensure_server(self, uid: int) -> int:
        """The PID of ``uid``'s server, started now if it does not run yet."""
        running = self.servers()
        if uid in running:
            return running[uid]
        self.command(f"start_server -uid {uid}")
        pid = self.servers().get(uid)
        if pid is None:
            raise MpsError(f"MPS server for uid {uid} on {self.gpu_uuid} did not start; see {self.log_dir}")
        return pid

    def set_limits(self, server_pid: int, percentage: int, memory_mib: int | None) -> None:
        """Cap the server's clients: active thread percentage and pinned memory on device 0 (the
        daemon sees only its own GPU, so the GPU is device 0)."""
        self._expect_set(f"set_active_thread_percentage {server_pid} {percentage}")
        if memory_mib is not None:
            self._expect_set(f"set_device_pinned_mem_limit {server_pid} 0 {mps_size(memory_mib)}")

    def set_default_limits(self, percentage: int, memory_mib: int | None) -> None:
        """The limits a server gets when it starts, before :meth:`set_limits` gives it its own: a
        client that connects first makes the daemon start its user's server with these."""
        self._expect_set(f"set_default_active_thread_percentage {percentage}")
        if memory_mib is not None:
            self._expect_set(f"set_default_device_pinned_mem_limit 0 {mps_size(memory_mib)}")

    def shutdown_server(self, server_pid: int) -> None:
        self._expect_set(f"shutdown_server {server_pid}")

    def quit(self) -> None:
        """Stop the daemon and its servers; returns once its process has ended."""
        pid = self.daemon_pid()
        if pid is None:
            return
        self.command("quit")
        deadline = time.monotonic() + self.timeout
        while not _ended(pid):
            if time.monotonic() > deadline:
                raise MpsError(f"MPS control daemon for {self.gpu_uuid} did not quit in {self.timeout:g} s")
            time.sleep(0.01)

    def _expect_set(self, line: str) -> None:
        """A set command answers nothing or the value it set; anything else is a refusal."""
        for reply in self.command(line):
            try:
                float(reply)
            except ValueError:
                raise MpsError(f"MPS refused {line!r} on {self.gpu_uuid}: {reply}") from None


def process_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The PIDs of ``pid``'s child processes, from each process's ``stat`` (its parent's PID)."""
    found = []
    for entry in proc.iterdir():
        try:
            if entry.name.isdigit() and _stat(entry)[1] == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return sorted(found)


def _stat(entry: Path) -> tuple[str, int]:
    """A process's state letter and parent PID: the fields after its name, which may hold spaces
    and parentheses, so it is cut at the last ``)``."""
    fields = entry.joinpath("stat").read_text().rpartition(")")[2].split()
    return fields[0], int(fields[1])


def _ended(pid: int) -> bool:
    """Gone, or a zombie (its parent may be slow to reap it; it holds nothing any more)."""
    try:
        return _stat(Path(f"/proc/{pid}"))[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return True


def _output(result: subprocess.CompletedProcess) -> str:
    return (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}")[:500]
