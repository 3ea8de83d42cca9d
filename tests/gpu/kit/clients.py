"""The kit's side of its CUDA clients: starting one in a given environment, talking to it, and
making sure none outlives the kit."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.mps import MpsControl
from slurm_vgpu.node import slice as slice_file

ROOT = Path(__file__).resolve().parents[3]
REPLY_TIMEOUT = 180.0  # seconds: a client's start (CUDA and torch) or one command
QUIT_TIMEOUT = 10.0


class ClientError(RuntimeError):
    """A client could not start or answer: its own words, or its stderr."""


def mps_env(control: MpsControl, gpu: GpuRecord, share: int, memory_mib: int | None = None) -> dict[str, str]:
    """The environment a task of a slice gets: the variables of its slice file, as the SPANK plugin
    exports them (the file's device rules are Slurm's cgroup, not the task's environment)."""
    text = slice_file.render(slice_file.Slice(0, gpu.uuid, gpu.minor, share, memory_mib, control.pipe_dir,
                                              control.log_dir), node_minors=[gpu.minor], uvm_major=None)
    variables = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CUDA_"))
    return {**os.environ, **variables}


def plain_env(gpu: GpuRecord, no_pipe: Path) -> dict[str, str]:
    """A client that reaches no MPS: its pipe directory is an empty one, so CUDA runs it on its own
    context (time-sliced with the GPU's other contexts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_MPS_")}
    return {**env, "CUDA_VISIBLE_DEVICES": gpu.uuid, "CUDA_MPS_PIPE_DIRECTORY": str(no_pipe)}


class Client:
    """One client process; ``ready`` is its first line (SMs and memory as CUDA gives them)."""

    live: list[Client] = []  # every client started, for :func:`stop_all`

    def __init__(self, role: str, env: dict[str, str], **options):
        self.role = role
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: CUDA's warnings never block the client
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.gpu.kit.client", role, json.dumps(options)], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        Client.live.append(self)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready: dict | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def reply(self, timeout: float = REPLY_TIMEOUT) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise ClientError(f"{self.role} client {self.pid} did not answer in {timeout:.0f} s") from None
        if line is None:
            self.process.wait()
            self.stderr.seek(0)
            stderr = self.stderr.read().strip().splitlines()
            raise ClientError(f"{self.role} client exited {self.process.returncode}: "
                              f"{stderr[-1] if stderr else 'no output'}")
        return json.loads(line)

    def wait_ready(self) -> dict:
        """The client's first line; ClientError with its reason when it could not start."""
        self.ready = self.reply()
        if not self.ready.get("ready"):
            raise ClientError(self.ready.get("error", "not ready"))
        return self.ready

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str) -> dict:
        self.send(command)
        return self.reply()

    def stop(self) -> None:
        """Let the client leave CUDA as a finished job does (the MPS server sees it disconnect); kill
        it when it does not within ``QUIT_TIMEOUT``."""
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)  # one the guard left frozen could not read its quit
                self.send("quit")
                self.process.wait(QUIT_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        self.process.wait()
        self.stderr.close()
        if self in Client.live:
            Client.live.remove(self)


def started(role: str, envs: list[dict[str, str]], **options) -> list[Client]:
    """Clients started together (CUDA initialises in parallel), each ready; all stopped when one fails."""
    clients = [Client(role, env, **options) for env in envs]
    try:
        for client in clients:
            client.wait_ready()
    except BaseException:
        for client in clients:
            client.stop()
        raise
    return clients


def run_together(clients: list[Client], seconds: float) -> list[dict]:
    """Every client runs its workload over the same ``seconds``."""
    for client in clients:
        client.send(f"run {seconds}")
    return [client.reply(seconds + REPLY_TIMEOUT) for client in clients]


def stop_all() -> None:
    for client in list(Client.live):
        client.stop()
