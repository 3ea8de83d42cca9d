"""``slurm-vgpu serve``: a service's replicas as vgpu jobs, HAProxy in front, kept in step.

Starting a service checks that its router's port is free, starts HAProxy (:mod:`.haproxy`) and
submits one vgpu job per replica; anything that fails on the way is undone, so nothing is left
running half-started. A follower then keeps HAProxy's servers the replicas Slurm runs now, once a
second: a replica that starts (or is requeued onto another node) joins the pool at its node's
address, one that ends, is requeued or preempted leaves it; HAProxy's own health checks take out a
replica whose process died before Slurm noticed. Weights are each replica's service rate as its
slice gives it, the GPU's speed (the site's GpuSpeed, else the datasheet) times its share, so that
mu_i / lambda_i stay equal (docs/routing.md). Everything a service has lives in one directory:
its state, HAProxy's configuration and socket, the replicas' output and the follower's log.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ..adapters.gpus import GpuRecord
from ..adapters.slurm import ENDED_STATES, Job, Slurm, SlurmError, pinned_gres
from ..catalog import speed_of
from .haproxy import Endpoint, HAProxyError, Runtime, Server, check_config, config, sync
from .service import Service
from .weights import weights

log = logging.getLogger("slurm_vgpu.serve")

STATE_FILE = "service.json"
FOLLOW_INTERVAL_S = 1.0


class ServeError(RuntimeError):
    """A service could not be started or reached; the message says why and what to do."""


@dataclass
class Deployment:
    """What a started service has: kept in ``<dir>/service.json``."""

    name: str
    dir: str
    listen: tuple[str, int]
    share: int  # each replica's % of one GPU
    jobs: dict[str, int]  # replica name -> Slurm job id
    ports: dict[str, int]  # replica name -> the port its command listens on
    router_pid: int
    follower_pid: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def admin_socket(self) -> Path:
        return self.path / "haproxy.sock"

    def log_of(self, replica: str) -> Path:
        return self.path / f"{replica}.out"

    def save(self) -> None:
        tmp = self.path / (STATE_FILE + ".new")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> Deployment:
        try:
            doc = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ServeError(f"{directory} holds no started service ({STATE_FILE} is missing)") from None
        return cls(**{**doc, "listen": tuple(doc["listen"])})


def replica_names(service: Service) -> list[str]:
    return [f"{service.name}-{i}" for i in range(service.replicas)]


def sbatch_options(service: Service, replica: str, directory: Path) -> list[str]:
    gres = ":".join(["vgpu", *([service.model] if service.model else []), str(service.share)])
    return [f"--gres={gres}", f"--vgpu-class={service.slo_class}", f"--job-name={replica}",
            f"--output={directory / f'{replica}.out'}", "--open-mode=append",
            *([f"--vgpu-mem={service.memory_mib}M"] if service.memory_mib else []),
            *([f"--partition={service.partition}"] if service.partition else [])]


def _port_taken(listen: tuple[str, int]) -> str | None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(listen)
        except OSError as exc:
            return f"Listen={listen[0]}:{listen[1]}: the router cannot listen there ({exc.strerror}); choose a free port"
    return None


def start(service: Service, directory: Path, slurm: Slurm) -> Deployment:
    """HAProxy and the replicas' jobs; ServeError, with everything started undone, when one fails."""
    if (directory / STATE_FILE).exists():
        raise ServeError(f"{directory} already holds service {service.name}; stop it first "
                         f"(slurm-vgpu serve stop {directory})")
    if problem := _port_taken(service.listen):
        raise ServeError(problem)
    directory.mkdir(parents=True, exist_ok=True)
    admin = directory / "haproxy.sock"
    cfg = directory / "haproxy.cfg"
    cfg.write_text(config(service.name, Endpoint(*service.listen), admin))
    try:
        check_config(cfg)
    except HAProxyError as exc:
        raise ServeError(str(exc)) from None
    with open(directory / "haproxy.log", "ab") as router_log:
        router = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=router_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deployment = Deployment(service.name, str(directory), service.listen, service.share, {}, {}, router.pid)
    try:
        _wait_for_socket(router, admin, directory)
        for index, replica in enumerate(replica_names(service)):
            deployment.ports[replica] = service.port_of(index)
            deployment.jobs[replica] = slurm.submit(*sbatch_options(service, replica, directory),
                                                    command=service.replica_command(index))
    except (SlurmError, ServeError) as exc:
        stop(deployment, slurm)
        raise ServeError(f"service {service.name} not started, nothing left running: {exc}") from None
    deployment.save()
    return deployment


def _wait_for_socket(router: subprocess.Popen, admin: Path, directory: Path) -> None:
    for _ in range(100):
        if admin.exists():
            return
        if router.poll() is not None:
            raise ServeError(f"HAProxy exited at start; its log: {directory / 'haproxy.log'}")
        time.sleep(0.05)
    raise ServeError(f"HAProxy made no admin socket in 5 s; its log: {directory / 'haproxy.log'}")


def _model(job: Job) -> str | None:
    """The GPU model a running replica's slice is on, from its per-GPU GRES (``h100_0`` -> h100)."""
    pinned = pinned_gres(job.tres_per_node)
    return GpuRecord.model_of(pinned[0][0]) if pinned else None


def running(deployment: Deployment, slurm: Slurm) -> tuple[dict[str, Job], dict[str, Endpoint]]:
    """Each replica's job as Slurm shows it, and where each running one listens."""
    by_id = slurm.jobs_by_id(list(deployment.jobs.values()))
    jobs = {name: by_id[job_id] for name, job_id in deployment.jobs.items() if job_id in by_id}
    addresses = slurm.node_addresses() if any(j.state == "RUNNING" for j in jobs.values()) else {}
    endpoints = {name: Endpoint(addresses.get(job.nodes, job.nodes), deployment.ports[name])
                 for name, job in jobs.items() if job.state == "RUNNING" and job.nodes}
    return jobs, endpoints


def replica_weights(jobs: Mapping[str, Job], share: int, site_speeds: Mapping[str, float]) -> dict[str, int]:
    """Whole weights from each running replica's service rate: its GPU's speed times its share."""
    return weights({name: speed_of(model, site_speeds)[0] * share
                    for name, job in jobs.items() if (model := _model(job)) is not None})


def follow_once(deployment: Deployment, slurm: Slurm, runtime: Runtime, site_speeds: Mapping[str, float]) -> list[str]:
    jobs, endpoints = running(deployment, slurm)
    return sync(runtime, deployment.name, endpoints,
                replica_weights({n: jobs[n] for n in endpoints}, deployment.share, site_speeds))


def follow(deployment: Deployment, slurm: Slurm, site_speeds: Mapping[str, float], stopping: threading.Event) -> None:
    """Until ``stopping``: the pool follows the replicas Slurm runs; a failed round is logged and
    tried again (Slurm or HAProxy may be briefly away)."""
    runtime = Runtime(deployment.admin_socket)
    while not stopping.is_set():
        try:
            for change in follow_once(deployment, slurm, runtime, site_speeds):
                log.info("%s: %s", deployment.name, change)
        except (SlurmError, HAProxyError, OSError) as exc:
            log.warning("%s: the pool is not updated this round: %s", deployment.name, exc)
        stopping.wait(FOLLOW_INTERVAL_S)


def stop(deployment: Deployment, slurm: Slurm) -> list[str]:
    """Cancel the replicas and stop the follower and HAProxy; what was stopped."""
    done = []
    if deployment.jobs:
        slurm.scancel(list(deployment.jobs.values()))
        done.append("cancelled jobs " + ", ".join(map(str, deployment.jobs.values())))
    for what, pid in (("follower", deployment.follower_pid), ("HAProxy", deployment.router_pid)):
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            done.append(f"stopped the {what} (pid {pid})")
    (deployment.path / STATE_FILE).unlink(missing_ok=True)
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def status(deployment: Deployment, slurm: Slurm) -> list[dict]:
    """One record per replica: its job, where it runs, and whether the router sends to it."""
    jobs, endpoints = running(deployment, slurm)
    try:
        servers: dict[str, Server] = Runtime(deployment.admin_socket).servers(deployment.name)
    except HAProxyError:
        servers = {}
    records = []
    for name, job_id in deployment.jobs.items():
        job, server, endpoint = jobs.get(name), servers.get(name), endpoints.get(name)
        if server is not None and server.up:
            pool = "serving"
        elif endpoint is not None:
            pool = f"not listening on {endpoint.address}:{endpoint.port}; its log: {deployment.log_of(name)}"
        elif job is None or job.state in ENDED_STATES:
            pool = f"ended ({job.state if job else 'gone from Slurm'}); its log: {deployment.log_of(name)}"
        else:
            pool = f"not running ({job.state})"
        records.append({"replica": name, "job_id": job_id, "state": job.state if job else "ENDED",
                        "node": job.nodes if job else "", "port": deployment.ports[name],
                        "weight": server.weight if server else 0, "pool": pool,
                        "command_log": str(deployment.log_of(name))})
    return records
