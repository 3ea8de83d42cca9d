"""``slurm-vgpu serve``: a service's replicas as vgpu jobs, HAProxy in front, kept in step.

Starting a service checks that its router's port is free, starts HAProxy (:mod:`.haproxy`) and
submits one vgpu job per replica; anything that fails on the way is undone, so nothing is left
running half-started. A follower then keeps HAProxy's servers the replicas Slurm runs now, once a
second: a replica that starts (or is requeued onto another node) joins the pool at its node's
address, one that ends, is requeued or preempted leaves it, and one whose job ended is submitted
again (a few times, not for ever); HAProxy's own health checks take out a replica whose process
died before Slurm noticed. Weights are each replica's service rate, so that mu_i / lambda_i stay
equal (docs/routing.md): first as its slice gives it, the service's profile (its throughput on that
GPU model at that share, per batch size), else the GPU's speed (the site's GpuSpeed, else the
datasheet) times its share; then as measured from its completions in HAProxy's counters.
Everything a service has lives in one directory: its state, HAProxy's configuration and socket,
the replicas' output and the follower's log.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..adapters.gpus import GpuRecord
from ..adapters.slurm import ENDED_STATES, Job, Slurm, SlurmError, pinned_gres
from .haproxy import Endpoint, HAProxyError, Load, Runtime, Server, batch_backends, check_config, config, sync
from ..slo import UTILISATION_CEILING
from .service import MOST_REPLICAS, Service
from .weights import MeasuredRates, replica_rates

log = logging.getLogger("slurm_vgpu.serve")

Profiled = Mapping[int, Mapping[str, float]]  # batch size -> GPU model -> requests/s of one replica at the share

STATE_FILE = "service.json"
FOLLOW_INTERVAL_S = 1.0
SAMPLES_PER_ROUND = 10  # of HAProxy's counters, for each replica's busy time
WEIGHT_TOLERANCE = 0.1  # a server's weight changes when the new one is more than 10% away
RESTART_LIMIT = 3  # times one replica is submitted again within RESTART_WINDOW_S; then it stays ended
RESTART_WINDOW_S = 600.0


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
    # from Profile=: each backend's (one per batch size profiled) GPU model -> requests/s at the share
    profiled: dict[str, dict[str, float]] = field(default_factory=dict)
    # what each replica's job is submitted with, to submit it again when it ends (sbatch options, command)
    submissions: dict[str, tuple[list[str], str]] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)  # replica -> when it was submitted again

    @property
    def backends(self) -> dict[str, dict[str, float]]:
        """Backend -> its profile (empty without one): the service's own, and one per larger batch."""
        return self.profiled or {self.name: {}}

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
        submissions = {name: (list(options), command) for name, (options, command) in doc.get("submissions", {}).items()}
        return cls(**{**doc, "listen": tuple(doc["listen"]), "submissions": submissions})


def replica_names(service: Service) -> list[str]:
    return [f"{service.name}-{i}" for i in range(service.replicas)]


def sized(service: Service, profiled: Profiled) -> Service:
    """The service with its number of replicas: as written, or (``Rate=``) the fewest that carry
    the rate at :data:`UTILISATION_CEILING` of their profiled throughput at its share (at the
    smallest batch profiled), each on the ``Model`` it asks for, else on the slowest profiled model,
    so the rate is carried wherever the replicas land. ServeError when the profile cannot size it."""
    if service.rate is None:
        return service
    rates = profiled[min(profiled)]
    models = service.models or (min(rates, key=lambda m: (rates[m], m)),)
    for model in models:
        if model not in rates:
            raise ServeError(f"Profile={service.profile} has no curve on {model}; measure it there "
                             f"(slurm-vgpu profile {service.profile} --model {model} -- COMMAND) or give Replicas=N")
    carry = [UTILISATION_CEILING * rates[m] for m in models]  # what each replica of a turn carries
    turns = int(service.rate // sum(carry))
    count, carried = turns * len(models), turns * sum(carry)
    while carried < service.rate:
        carried += carry[count % len(models)]
        count += 1
    why = (f"Rate={service.rate:g}/s needs {count} replicas of "
           f"{service.share}% (" + ", ".join(f"{rates[m]:.1f}/s each on {m}" for m in models)
           + f", {UTILISATION_CEILING:.0%} of it used)")
    if count > MOST_REPLICAS:
        raise ServeError(f"{why}; at most {MOST_REPLICAS}: give a larger Share or a lower Rate")
    if service.port + count - 1 > 65535:
        raise ServeError(f"{why}; their ports Port to Port+{count - 1} end above 65535: give a lower Port")
    return replace(service, replicas=count)


def sbatch_options(service: Service, index: int, directory: Path) -> list[str]:
    """What replica ``index``'s job is submitted with."""
    replica, model = replica_names(service)[index], service.model_of(index)
    gres = ":".join(["vgpu", *([model] if model else []), str(service.share)])
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


def start(service: Service, directory: Path, slurm: Slurm, profiled: Profiled = {}) -> Deployment:
    """HAProxy and the replicas' jobs; ServeError, with everything started undone, when one fails.
    ``profiled``: the service's profile, per batch size each GPU model's requests/s at its share;
    each batch size gets its own backend (request-aware routing)."""
    if (directory / STATE_FILE).exists():
        raise ServeError(f"{directory} already holds service {service.name}; stop it first "
                         f"(slurm-vgpu serve stop {directory})")
    if problem := _port_taken(service.listen):
        raise ServeError(problem)
    directory.mkdir(parents=True, exist_ok=True)
    admin = directory / "haproxy.sock"
    cfg = directory / "haproxy.cfg"
    cfg.write_text(config(service.name, Endpoint(*service.listen), admin, sorted(profiled)))
    try:
        check_config(cfg)
    except HAProxyError as exc:
        raise ServeError(str(exc)) from None
    with open(directory / "haproxy.log", "ab") as router_log:
        router = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=router_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    deployment = Deployment(service.name, str(directory), service.listen, service.share, {}, {}, router.pid,
                            profiled={backend: dict(profiled[b])
                                      for b, backend in batch_backends(service.name, list(profiled)).items()})
    try:
        _wait_for_socket(router, admin, directory)
        for index, replica in enumerate(replica_names(service)):
            deployment.ports[replica] = service.port_of(index)
            options, command = sbatch_options(service, index, directory), service.replica_command(index)
            deployment.submissions[replica] = (options, command)
            deployment.jobs[replica] = slurm.submit(*options, command=command)
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


def prior_rates(jobs: Mapping[str, Job], share: int, profiled: Mapping[str, float],
                site_speeds: Mapping[str, float]) -> dict[str, float]:
    """Each running replica's service rate before any is measured, from the GPU model it runs on."""
    models = {name: model for name, job in jobs.items() if (model := _model(job)) is not None}
    return replica_rates(models, share, profiled, site_speeds)


def to_submit_again(deployment: Deployment, jobs: Mapping[str, Job], now: float) -> list[str]:
    """The replicas to submit again: their job ended (or Slurm no longer knows it), and they were
    submitted again fewer than :data:`RESTART_LIMIT` times in the last :data:`RESTART_WINDOW_S`
    (a replica that keeps failing stays ended, its log saying why)."""
    return [name for name in deployment.jobs if name in deployment.submissions
            and ((job := jobs.get(name)) is None or job.state in ENDED_STATES)
            and _recent_restarts(deployment, name, now) < RESTART_LIMIT]


def _recent_restarts(deployment: Deployment, name: str, now: float) -> int:
    return sum(1 for at in deployment.restarts.get(name, []) if now - at < RESTART_WINDOW_S)


def submit_again(deployment: Deployment, slurm: Slurm, jobs: Mapping[str, Job]) -> list[str]:
    """Submit each replica of :func:`to_submit_again` again, keeping the new job ids in the state
    file; what was done, one line each."""
    done = []
    for name in to_submit_again(deployment, jobs, time.time()):
        options, command = deployment.submissions[name]
        ended = jobs.get(name)
        old, deployment.jobs[name] = deployment.jobs[name], slurm.submit(*options, command=command)
        deployment.restarts.setdefault(name, []).append(time.time())
        deployment.save()
        done.append(f"{name}: job {old} ended ({ended.state if ended else 'gone from Slurm'}); "
                    f"submitted again as job {deployment.jobs[name]}")
    return done


class Meter:
    """Each server's completions and busy time, in each backend, from HAProxy's counters: sampled
    :data:`SAMPLES_PER_ROUND` times a round, a server's busy time is the round's length times the
    fraction of samples that found requests in hand; its completions, the requests sent to it less
    the growth of those in hand."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.last: dict[tuple[str, str], Load] = {}
        self.now: dict[tuple[str, str], Load] = {}
        self.busy: Counter[tuple[str, str]] = Counter()
        self.samples = 0
        self.since = time.monotonic()

    def sample(self) -> None:
        self.now = {(backend, name): load for backend, servers in self.runtime.loads().items()
                    for name, load in servers.items()}
        self.busy.update(key for key, load in self.now.items() if load.in_hand)
        self.samples += 1

    def take(self) -> dict[tuple[str, str], tuple[int, float, float]]:
        """(backend, server) -> (completed, busy seconds, elapsed seconds) since the last take; a
        server added since (or added again: its counters start over) is measured from the next."""
        elapsed = time.monotonic() - self.since
        taken = {}
        for key, load in self.now.items():
            before = self.last.get(key)
            if self.samples and before is not None and load.started >= before.started:
                completed = load.started - before.started - (load.in_hand - before.in_hand)
                taken[key] = (max(completed, 0), elapsed * self.busy[key] / self.samples, elapsed)
        self.last, self.busy, self.samples, self.since = self.now, Counter(), 0, time.monotonic()
        return taken


def follow(deployment: Deployment, slurm: Slurm, site_speeds: Mapping[str, float], stopping: threading.Event) -> None:
    """Until ``stopping``: a replica whose job ended is submitted again (:func:`to_submit_again`);
    each backend's pool follows the replicas Slurm runs, each replica weighted by its service rate
    there (its prior from the profile or GPU speed, then its measured completions); a failed round
    is logged and tried again (Slurm or HAProxy may be briefly away)."""
    runtime = Runtime(deployment.admin_socket)
    meter = Meter(runtime)
    measured = {backend: MeasuredRates({}) for backend in deployment.backends}
    deployment.follower_pid = os.getpid()  # this process saves the state from now on
    while not stopping.is_set():
        try:
            jobs, endpoints = running(deployment, slurm)
            for change in submit_again(deployment, slurm, jobs):
                log.info("%s", change)
            serving_jobs = {n: jobs[n] for n in endpoints}
            for backend, profiled in deployment.backends.items():
                measured[backend].track(prior_rates(serving_jobs, deployment.share, profiled, site_speeds))
            for (backend, name), (completed, busy_s, elapsed_s) in meter.take().items():
                if backend in measured and name in measured[backend].prior:
                    measured[backend].observe(name, completed, busy_s, elapsed_s)
            for backend, rates in measured.items():
                for change in sync(runtime, backend, endpoints, rates.weights(), WEIGHT_TOLERANCE):
                    log.info("%s: %s", backend, change)
        except (SlurmError, HAProxyError, OSError) as exc:
            log.warning("%s: the pool is not updated this round: %s", deployment.name, exc)
        for _ in range(SAMPLES_PER_ROUND):
            if stopping.wait(FOLLOW_INTERVAL_S / SAMPLES_PER_ROUND):
                return
            try:
                meter.sample()
            except (HAProxyError, OSError):
                continue


def stop(deployment: Deployment, slurm: Slurm) -> list[str]:
    """Stop the follower (first, so that it submits no replica again), cancel the replicas and stop
    HAProxy; what was stopped."""
    done = []
    if _stopped(deployment.follower_pid):
        done.append(f"stopped the follower (pid {deployment.follower_pid})")
        if (deployment.path / STATE_FILE).exists():  # the job ids as the follower left them
            deployment = Deployment.load(deployment.path)
    if deployment.jobs:
        slurm.scancel(list(deployment.jobs.values()))
        done.append("cancelled jobs " + ", ".join(map(str, deployment.jobs.values())))
    if _stopped(deployment.router_pid):
        done.append(f"stopped the HAProxy (pid {deployment.router_pid})")
    (deployment.path / STATE_FILE).unlink(missing_ok=True)
    return done


def _stopped(pid: int | None, wait_s: float = 5.0) -> bool:
    """SIGTERM to a process of ours that runs, and until it has exited; whether there was one."""
    if not pid or not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def status(deployment: Deployment, slurm: Slurm) -> list[dict]:
    """One record per replica: its job, where it runs (node, GPU), and whether the router sends to it."""
    jobs, endpoints = running(deployment, slurm)
    runtime = Runtime(deployment.admin_socket)
    try:
        pools: dict[str, dict[str, Server]] = {backend: runtime.servers(backend) for backend in deployment.backends}
    except HAProxyError:
        pools = {}
    servers = pools.get(deployment.name, {})
    records = []
    for name, job_id in deployment.jobs.items():
        job, server, endpoint = jobs.get(name), servers.get(name), endpoints.get(name)
        if server is not None and server.up:
            pool = "serving"
        elif endpoint is not None:
            pool = f"not listening on {endpoint.address}:{endpoint.port}; its log: {deployment.log_of(name)}"
        elif job is None or job.state in ENDED_STATES:
            given_up = (f"; submitted again {RESTART_LIMIT} times in {RESTART_WINDOW_S / 60:g} min, not again"
                        if _recent_restarts(deployment, name, time.time()) >= RESTART_LIMIT else "")
            pool = f"ended ({job.state if job else 'gone from Slurm'}){given_up}; its log: {deployment.log_of(name)}"
        else:
            pool = f"not running ({job.state})"
        pinned = pinned_gres(job.tres_per_node) if endpoint is not None else []
        records.append({"replica": name, "job_id": job_id, "state": job.state if job else "ENDED",
                        "node": job.nodes if job else "", "gpu": pinned[0][0] if pinned else "",
                        "port": deployment.ports[name],
                        "weight": server.weight if server else 0, "pool": pool,
                        "weight_by_backend": {b: in_b[name].weight for b, in_b in pools.items() if name in in_b},
                        "restarts": len(deployment.restarts.get(name, [])),
                        "command_log": str(deployment.log_of(name))})
    return records
