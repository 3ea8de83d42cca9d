"""HAProxy in front of a service's replicas: the one place slurm-vgpu reaches it.

The proxy is HAProxy from the distribution, not a router of our own: it starts with a backend and
no servers (:func:`config`), and the replicas, which come and go as their jobs run, are requeued or
preempted, are added, reweighted and removed through its runtime API (the admin socket), with no
reload and no request lost (:func:`sync`). Each server is health-checked every second and is out
of the pool after two failed checks; a request whose replica refuses it or dies before answering
is sent once more, to another (``retries 1``, ``option redispatch``); with no replica up, HAProxy
answers 503 "No server is available to handle this request".

``balance leastconn`` with the weights of :mod:`slurm_vgpu.route.weights` sends a request to the
replica with the fewest requests in hand per unit of weight: the mu/lambda routing of
docs/routing.md.
"""
from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# a dead replica is out of the pool two failed checks after it died (about two seconds); a
# restarted one is back after one good check
HEALTH = "check inter 1s fall 2 rise 1"
# srv_admin_state flags of a server in maintenance: forced (disable server), inherited, from the
# configuration, from a DNS resolution (HAProxy's SRV_ADMF_FMAINT, IMAINT, CMAINT, RMAINT)
MAINTENANCE = 0x01 | 0x02 | 0x04 | 0x20
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # what HAProxy takes as a proxy or server name
BATCH_HEADER = "X-Batch-Size"  # a request's batch size, for request-aware routing


class HAProxyError(RuntimeError):
    """HAProxy refused a command or a configuration; the message is its own answer."""


@dataclass(frozen=True)
class Endpoint:
    """Where a replica listens."""

    address: str
    port: int


@dataclass(frozen=True)
class Server:
    """A server of the backend as HAProxy runs it."""

    name: str
    endpoint: Endpoint
    weight: int
    up: bool  # its health checks pass
    enabled: bool  # not in maintenance (drained by weight 0 still counts as enabled)


def _named(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise HAProxyError(f"{kind} name {name!r}: HAProxy takes letters, digits and _.:- only (at most 64)")
    return name


def batch_backends(service: str, batches: Sequence[int]) -> dict[int, str]:
    """The backend of each profiled batch size (request-aware routing), ascending: the service's
    own for the smallest, ``<service>-b<batch>`` for each larger one."""
    sizes = sorted(set(batches))
    return {b: service if b == sizes[0] else _named("backend", f"{service}-b{b}") for b in sizes}


def config(service: str, listen: Endpoint, admin_socket: Path, batches: Sequence[int] = ()) -> str:
    """haproxy.cfg of one service: its frontend on ``listen`` and a backend with no servers yet.

    With ``batches`` (the batch sizes the service's profile measured, ascending), a request that
    states its batch size in :data:`BATCH_HEADER` goes to the backend of the smallest measured batch
    at least that large (the largest for any larger), whose servers are the same replicas weighted
    by their throughput at that batch; a request that states none, or the smallest batch, goes to
    the service's own backend."""
    _named("service", service)
    named = batch_backends(service, batches)
    sizes = list(named)
    rules = "".join(
        f"    use_backend {named[b]} if {{ req.hdr_val({BATCH_HEADER}) gt {below} }}"
        + (f" {{ req.hdr_val({BATCH_HEADER}) le {b} }}\n" if b != sizes[-1] else "\n")
        for below, b in zip(sizes, sizes[1:]))
    backends = "".join(f"\nbackend {named[b]}\n    balance leastconn\n" for b in sizes[1:])
    return f"""\
# slurm-vgpu serve: {service}. Servers are added through the admin socket as replicas run.
global
    stats socket {admin_socket} mode 600 level admin
    log stderr format short local0 notice

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # a request its replica refused, or dropped unanswered, goes once more, to another replica
    retries 1
    option redispatch 1
    retry-on conn-failure empty-response

frontend {service}
    bind {listen.address}:{listen.port}
{rules}    default_backend {service}

backend {service}
    balance leastconn
{backends}"""


def check_config(path: Path) -> None:
    """``haproxy -c``: HAProxyError with its complaint when the file is not a valid configuration."""
    done = subprocess.run(["haproxy", "-c", "-q", "-f", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise HAProxyError(f"{path}: {(done.stderr or done.stdout).strip()}")


@dataclass(frozen=True)
class Load:
    """A server's request counters: requests sent to it since it was added, and in hand now."""

    started: int
    in_hand: int


class Runtime:
    """HAProxy's runtime API on its admin socket: one command per connection."""

    def __init__(self, admin_socket: Path, timeout: float = 5.0):
        self.admin_socket = admin_socket
        self.timeout = timeout

    def ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(self.timeout)
            try:
                conn.connect(str(self.admin_socket))
            except OSError as exc:
                raise HAProxyError(f"HAProxy's admin socket {self.admin_socket}: {exc}") from exc
            conn.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        return answer.decode().strip()

    def _do(self, command: str, success: str = "") -> None:
        answer = self.ask(command)
        if answer != success:
            raise HAProxyError(f"{command}: {answer or 'no answer'}")

    def servers(self, backend: str) -> dict[str, Server]:
        """The backend's servers, from ``show servers state``."""
        lines = self.ask(f"show servers state {_named('backend', backend)}").splitlines()
        header = next((line[2:].split() for line in lines if line.startswith("# ")), None)
        if header is None:
            raise HAProxyError(f"show servers state {backend}: {' '.join(lines) or 'no answer'}")
        found = {}
        for line in lines:
            if not line or line.startswith("#") or line.strip() == "1":  # "1": the format's version
                continue
            row = dict(zip(header, line.split()))
            found[row["srv_name"]] = Server(
                name=row["srv_name"], endpoint=Endpoint(row["srv_addr"], int(row["srv_port"])),
                weight=int(row["srv_uweight"]),
                up=row["srv_op_state"] == "2",  # SRV_ST_RUNNING
                enabled=not int(row["srv_admin_state"]) & MAINTENANCE)
        return found

    def loads(self) -> dict[str, dict[str, Load]]:
        """Each backend's servers' counters, from ``show stat`` (``stot``: one per request,
        keep-alive or not; ``scur``: in hand)."""
        # every proxy's servers (-1 4 -1): 2.6 lists a proxy named here without its added servers
        lines = self.ask("show stat -1 4 -1").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise HAProxyError(f"show stat: {' '.join(lines) or 'no answer'}")
        header = lines[0][2:].split(",")
        found: dict[str, dict[str, Load]] = {}
        for row in (dict(zip(header, line.split(","))) for line in lines[1:] if line):
            found.setdefault(row["pxname"], {})[row["svname"]] = Load(int(row["stot"] or 0), int(row["scur"] or 0))
        return found

    def add(self, backend: str, name: str, endpoint: Endpoint, weight: int) -> None:
        """A new server, health-checked, in the pool once its first check passes: HAProxy counts a
        new server up before any check, and a replica still loading its model would get requests."""
        where = f"{_named('backend', backend)}/{_named('replica', name)}"
        self._do(f"add server {where} {endpoint.address}:{endpoint.port} weight {weight} {HEALTH}",
                 "New server registered.")
        self._do(f"enable health {where}")
        self._do(f"enable server {where}")
        # down until its first check passes (set in maintenance, it would be ignored); a request
        # sent to it in between, refused, goes to another replica (retries, redispatch)
        self._do(f"set server {where} health down")

    def set_weight(self, backend: str, name: str, weight: int) -> None:
        self._do(f"set weight {backend}/{name} {weight}")

    def remove(self, backend: str, name: str) -> None:
        """Out of the pool at once; its requests in hand are cut (its replica is gone or moved)."""
        self._do(f"disable server {backend}/{name}")
        self._do(f"shutdown sessions server {backend}/{name}")
        self._do(f"del server {backend}/{name}", "Server deleted.")


def sync(runtime: Runtime, backend: str, endpoints: Mapping[str, Endpoint], weights: Mapping[str, int],
         tolerance: float = 0.0) -> list[str]:
    """Make the backend's servers the replicas of ``endpoints`` (name -> where it listens now),
    weighted by ``weights`` (a replica with no weight gets 1); what changed, one line each. A
    replica that moved (requeued onto another node) is removed and added again. A server keeps its
    weight while the new one is within ``tolerance`` of it (measured weights wander a little)."""
    have = runtime.servers(backend)
    changes = []
    for name, server in have.items():
        if endpoints.get(name) != server.endpoint:
            runtime.remove(backend, name)
            changes.append(f"removed {name} ({server.endpoint.address}:{server.endpoint.port})")
    for name, endpoint in endpoints.items():
        weight = weights.get(name, 1)
        server = have.get(name)
        if server is None or server.endpoint != endpoint:
            runtime.add(backend, name, endpoint, weight)
            changes.append(f"added {name} at {endpoint.address}:{endpoint.port}, weight {weight}")
        elif abs(server.weight - weight) > tolerance * server.weight:
            runtime.set_weight(backend, name, weight)
            changes.append(f"{name}: weight {server.weight} -> {weight}")
    return changes
