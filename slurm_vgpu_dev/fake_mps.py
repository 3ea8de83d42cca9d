"""A stand-in for ``nvidia-cuda-mps-control`` on machines without a GPU.

It is started and driven exactly like the real binary: ``-d`` starts a control daemon in the
background (``-f`` in the foreground), reading ``CUDA_MPS_PIPE_DIRECTORY`` and
``CUDA_MPS_LOG_DIRECTORY``; run with no option it is a client that sends each line of stdin to that
daemon and prints the replies. Servers are real processes (``sleep`` renamed
``nvidia-cuda-mps-server``) running as the requested uid, so ``/proc`` tells their owner as it does
for real servers. The daemon keeps what it was told in ``fake-mps-state.json`` in the pipe
directory, so tests can assert the limits that were set.

``--gpus DIR`` (before ``-d``) names the directory of the simulated inventory files: the daemon
then finds its GPU there, and each server holds that simulated GPU's context while it runs, as a
real MPS server holds its GPU's. On a GPU that is EXCLUSIVE_PROCESS, that context is the only one:
a server that cannot get it does not start, and a client outside MPS gets none beside it
(:meth:`slurm_vgpu.adapters.gpus.SimulatedInventory.hold_context`).

Stdlib only on the client path: the prolog runs this client several times per job.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PID_FILE = "nvidia-cuda-mps-control.pid"
SOCKET = "control"
STATE_FILE = "fake-mps-state.json"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR = "/var/log/nvidia-mps"


def pipe_dir() -> Path:
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR)


def log_dir() -> Path:
    return Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY") or DEFAULT_LOG_DIR)


def _percentage(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise ValueError(text)
    return value


def _memory_limit(text: str) -> str:
    """NVIDIA's form: a whole number with an optional K, M or G suffix (``8G``, ``8192M``)."""
    digits = text[:-1] if text[-1:].upper() in ("K", "M", "G") else text
    if not digits.isdigit():
        raise ValueError(text)
    return text.upper()


class ControlState:
    """What the daemon knows: default limits and, per server PID, its uid and limits; ``gpus``, the
    simulated inventory holding its GPU, when there is one."""

    def __init__(self, directory: Path, gpus=None):
        self.path = directory / STATE_FILE
        self.gpus = gpus
        self.doc = {
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "default_active_thread_percentage": 100.0,
            "default_device_pinned_mem_limit": {},
            "servers": {},
            "commands": [],
        }
        self.hung = False  # simulate_hang was sent: the daemon takes no further connection
        self.save()

    @property
    def servers(self) -> dict:
        return self.doc["servers"]

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        tmp.replace(self.path)

    def server(self, pid_text: str) -> dict:
        server = self.servers.get(str(int(pid_text)))
        if server is None:
            raise LookupError(f"Server with PID {pid_text} not found")
        return server


def handle(state: ControlState, line: str) -> tuple[str, bool]:
    """Run one command; return (reply, whether the daemon should quit)."""
    words = line.split()
    if not words:
        return "", False
    state.doc["commands"].append(line.strip())
    name, args = words[0], words[1:]
    try:
        reply = _COMMANDS[name](state, *args) if name in _COMMANDS else f"Invalid command: {name}"
    except LookupError as exc:
        reply = str(exc.args[0])
    except (TypeError, ValueError):
        reply = f"Invalid arguments to {name}: {' '.join(args)}"
    state.save()
    return reply, name == "quit"


def _get_server_list(state: ControlState) -> str:
    return "\n".join(state.servers)


def _start_server(state: ControlState, flag: str, uid_text: str) -> str:
    if flag != "-uid":
        raise ValueError(flag)
    uid = int(uid_text)
    if any(s["uid"] == uid for s in state.servers.values()):
        return ""
    for pid in [p for p, s in state.servers.items() if s["uid"] != uid]:
        _stop_server(state, pid)  # the fake has no clients, so the other user's server is idle
    process = subprocess.Popen(
        ["nvidia-cuda-mps-server", "infinity"], executable="sleep", user=uid, preexec_fn=_end_with_daemon,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    if state.gpus is not None:
        from slurm_vgpu.adapters.gpus import ContextRefused

        try:
            state.gpus.hold_context(state.doc["visible_devices"], process.pid)
        except ContextRefused as exc:
            process.kill()
            process.wait()
            _log(f"Server for user {uid} failed to start: {exc}", name="server.log", who="Server")
            return ""
    state.servers[str(process.pid)] = {
        "uid": uid,
        "active_thread_percentage": state.doc["default_active_thread_percentage"],
        "device_pinned_mem_limit": dict(state.doc["default_device_pinned_mem_limit"]),
        "clients": [],
    }
    _log(f"Starting new server {process.pid} for user {uid}")
    return ""


def _end_with_daemon() -> None:
    """A server ends when its control daemon dies (killed, it cannot stop them), its GPU context
    with it: assumed of NVIDIA's servers, not yet seen on a real GPU."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_server(state: ControlState, pid: str) -> None:
    del state.servers[pid]
    if state.gpus is not None:
        state.gpus.release_context(state.doc["visible_devices"], int(pid))
    try:
        os.kill(int(pid), signal.SIGTERM)
        os.waitpid(int(pid), 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    _log(f"Server {pid} exited")


def _shutdown_server(state: ControlState, pid: str, *force: str) -> str:
    state.server(pid)
    _stop_server(state, str(int(pid)))
    return ""


def _get_client_list(state: ControlState, pid: str) -> str:
    return "\n".join(str(c) for c in state.server(pid)["clients"])


def _get_server_status(state: ControlState, pid: str) -> str:
    state.server(pid)
    return "ACTIVE"


def _set_active_thread_percentage(state: ControlState, pid: str, value: str) -> str:
    state.server(pid)["active_thread_percentage"] = _percentage(value)
    return f"{_percentage(value):.1f}"


def _get_active_thread_percentage(state: ControlState, pid: str) -> str:
    return f"{state.server(pid)['active_thread_percentage']:.1f}"


def _set_default_active_thread_percentage(state: ControlState, value: str) -> str:
    state.doc["default_active_thread_percentage"] = _percentage(value)
    return f"{_percentage(value):.1f}"


def _get_default_active_thread_percentage(state: ControlState) -> str:
    return f"{state.doc['default_active_thread_percentage']:.1f}"


def _set_device_pinned_mem_limit(state: ControlState, pid: str, device: str, value: str) -> str:
    state.server(pid)["device_pinned_mem_limit"][str(int(device))] = _memory_limit(value)
    return ""


def _get_device_pinned_mem_limit(state: ControlState, pid: str, device: str) -> str:
    return state.server(pid)["device_pinned_mem_limit"].get(str(int(device)), "N/A")


def _set_default_device_pinned_mem_limit(state: ControlState, device: str, value: str) -> str:
    state.doc["default_device_pinned_mem_limit"][str(int(device))] = _memory_limit(value)
    return ""


def _get_default_device_pinned_mem_limit(state: ControlState, device: str) -> str:
    return state.doc["default_device_pinned_mem_limit"].get(str(int(device)), "N/A")


def _terminate_client(state: ControlState, pid: str, client: str) -> str:
    clients = state.server(pid)["clients"]
    if int(client) in clients:
        clients.remove(int(client))
    return ""


def _simulate_fault(state: ControlState, *pid: str) -> str:
    """Fake only (NVIDIA has no such command): the server hits a fatal GPU exception, as a client's
    illegal memory access would cause, and logs it to server.log in NVIDIA's line format."""
    victims = [str(int(pid[0]))] if pid else list(state.servers)
    for server in victims:
        state.server(server)
        _log(f"Server {server} hit a fatal GPU exception on device 0; "
             "new clients are refused until every client has exited", name="server.log", who=f"Server {server}")
    return ""


def _simulate_hang(state: ControlState) -> str:
    """Fake only (NVIDIA has no such command): the daemon answers this command and then no other,
    while its process and its servers live on, as a wedged control daemon does."""
    state.hung = True
    return ""


def _quit(state: ControlState, *timeout: str) -> str:
    for pid in list(state.servers):
        _stop_server(state, pid)
    return ""


_COMMANDS = {
    "get_server_list": _get_server_list,
    "start_server": _start_server,
    "shutdown_server": _shutdown_server,
    "get_client_list": _get_client_list,
    "get_server_status": _get_server_status,
    "set_active_thread_percentage": _set_active_thread_percentage,
    "get_active_thread_percentage": _get_active_thread_percentage,
    "set_default_active_thread_percentage": _set_default_active_thread_percentage,
    "get_default_active_thread_percentage": _get_default_active_thread_percentage,
    "set_device_pinned_mem_limit": _set_device_pinned_mem_limit,
    "get_device_pinned_mem_limit": _get_device_pinned_mem_limit,
    "set_default_device_pinned_mem_limit": _set_default_device_pinned_mem_limit,
    "get_default_device_pinned_mem_limit": _get_default_device_pinned_mem_limit,
    "terminate_client": _terminate_client,
    "simulate_fault": _simulate_fault,
    "simulate_hang": _simulate_hang,
    "quit": _quit,
}


def _log(message: str, name: str = "control.log", who: str | None = None) -> None:
    """Append to control.log (or server.log) in the log directory in the real daemons' line
    format: ``[2024-05-01 12:00:00.123 Control 4321] message``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
    with open(log_dir() / name, "a") as log:
        log.write(f"[{stamp} {who or f'Control {os.getpid()}'}] {message}\n")


def simulated_gpu(inventories: Path | None):
    """The simulated inventory, among the files in ``inventories``, that lists this daemon's GPU."""
    if inventories is None:
        return None
    from slurm_vgpu.adapters.gpus import InventoryError, SimulatedInventory

    uuid = os.environ.get("CUDA_VISIBLE_DEVICES")
    for path in sorted(inventories.glob("*.json")):
        try:
            if any(g.uuid == uuid for g in SimulatedInventory(path).gpus()):
                return SimulatedInventory(path)
        except InventoryError:
            continue
    return None


def serves(directory: Path, gpu: str) -> bool:
    """Whether a control daemon answers in ``directory`` for GPU ``gpu``: where a CUDA client with
    that pipe directory becomes an MPS client."""
    try:
        return _running(directory) and json.loads((directory / STATE_FILE).read_text())["visible_devices"] == gpu
    except (OSError, ValueError, KeyError):
        return False


def serve(directory: Path, inventories: Path | None = None) -> None:
    """The daemon's loop: one command per connection, reply, close."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = directory / SOCKET
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    listener.listen(16)
    state = ControlState(directory, simulated_gpu(inventories))
    (directory / PID_FILE).write_text(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _log("Starting control daemon")
    try:
        while True:
            connection, _ = listener.accept()
            with connection, connection.makefile("rw") as stream:
                line = stream.readline()
                _log(f"User did send {line.strip()}")
                reply, done = handle(state, line)
                stream.write(reply + ("\n" if reply else ""))
            if done:
                break
            if state.hung:
                _log("Control daemon stops answering (simulate_hang)")
                while True:  # connections queue up unanswered; SIGTERM still ends it
                    signal.pause()
    finally:
        _quit(state)
        state.save()
        path.unlink(missing_ok=True)
        (directory / PID_FILE).unlink(missing_ok=True)
        _log("Control daemon exited")


def send(directory: Path, line: str) -> str:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(directory / SOCKET))
    with client, client.makefile("rw") as stream:
        stream.write(line.rstrip("\n") + "\n")
        stream.flush()
        client.shutdown(socket.SHUT_WR)
        return stream.read()


def _daemonize(directory: Path, inventories: Path | None) -> int:
    """Fork a session leader that serves; the parent returns once it has written its PID file."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
        os.write(write_end, f"{os.getpid()}\n".encode())
        os.close(write_end)
        try:
            serve(directory, inventories)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        pid = pipe.readline().strip()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if (directory / PID_FILE).read_text().strip() == pid:
                return 0
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    print("fake MPS control daemon did not start", file=sys.stderr)
    return 1


def _running(directory: Path) -> bool:
    try:
        send(directory, "get_server_list")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    inventories = None
    if args[:1] == ["--gpus"] and len(args) >= 2:
        inventories, args = Path(args[1]), args[2:]
    directory = pipe_dir()
    if args in (["-d"], ["-f"]):
        directory.mkdir(parents=True, exist_ok=True)
        log_dir().mkdir(parents=True, exist_ok=True)
        if _running(directory):
            print("An instance of this daemon is already running", file=sys.stderr)
            return 1
        if args == ["-d"]:
            return _daemonize(directory, inventories)
        serve(directory, inventories)
        return 0
    if args:
        print(f"usage: {Path(sys.argv[0]).name} [--gpus DIR] [-d | -f]  (commands on stdin)", file=sys.stderr)
        return 2
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            sys.stdout.write(send(directory, line))
        except (FileNotFoundError, ConnectionRefusedError):
            print(f"Cannot find MPS control daemon process (pipe directory {directory})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
