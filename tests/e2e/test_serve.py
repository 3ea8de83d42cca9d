"""``slurm-vgpu serve`` on a real Slurm: a service's replicas run as vgpu jobs, HAProxy in front
sends to where Slurm runs them, a replica cancelled under traffic leaves the pool within 5 s with no
request lost and is submitted again, and stop leaves nothing running. The replicas are Python's http.server, not models on
GPUs."""
from __future__ import annotations

import http.client
import json
import socket
import sys
import time

import pytest

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.route.weights import weights

from ..conftest import slurm
from .jobs import ENDED, output_dir, wait_for, wait_until
from .test_profiles import store_curve

pytestmark = pytest.mark.e2e

REPLICA = "exec /usr/bin/python3 -m http.server %p --bind 127.0.0.1"


def vgpu(cluster, *args: str):
    return slurm(cluster, sys.executable, "-m", "slurm_vgpu", *args, check=False)


def free_port(count: int = 1, start: int = 29400) -> int:
    """The first of ``count`` consecutive free ports on loopback, from ``start``."""
    for base in range(start, start + 500, 10):
        ports = [socket.socket() for _ in range(count)]
        try:
            for offset, s in enumerate(ports):
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in ports:
                s.close()
    raise AssertionError("no free ports")


def get(port: int, batch: int | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"X-Batch-Size": str(batch)} if batch else {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def refused(port: int) -> bool:
    try:
        get(port)
    except ConnectionRefusedError:
        return True
    return False


def status(cluster, directory) -> dict[str, dict]:
    result = vgpu(cluster, "serve", "status", str(directory), "--json")
    assert result.returncode == 0, result.stderr
    return {r["replica"]: r for r in json.loads(result.stdout)["replicas"]}


def service_file(cluster, name: str, listen: int, port: int, replicas: int | None = 2, command: str = REPLICA,
                 extra: str = "") -> str:
    path = output_dir(cluster) / f"{name}.svc"
    count = f"Replicas={replicas}\n" if replicas is not None else ""
    path.write_text(f"Name={name}\nCommand={command}\nPort={port}\n{count}Share=60\n"
                    f"Class=latency\nListen=127.0.0.1:{listen}\n{extra}")
    return str(path)


def test_replicas_run_as_vgpu_jobs_behind_a_router_that_follows_them(cluster):
    listen = free_port()
    base = free_port(3, listen + 10)
    directory = output_dir(cluster) / "serve-web"
    started = vgpu(cluster, "serve", "start", service_file(cluster, "web", listen, base), "--dir", str(directory),
                   "--json")
    assert started.returncode == 0, started.stderr
    jobs = json.loads(started.stdout)["service"]["jobs"]
    assert sorted(jobs) == ["web-0", "web-1"]
    try:
        replicas = wait_until("both replicas serving", lambda: (s := status(cluster, directory)) and all(
            r["pool"] == "serving" for r in s.values()) and s, 120, seen=lambda: status(cluster, directory))
        # each is a 60% vgpu job on its own GPU, and the router knows it at its node and port
        for name, record in replicas.items():
            assert record["state"] == "RUNNING" and record["job_id"] == jobs[name]
            assert record["port"] == base + int(name[-1]) and record["weight"] >= 1
        assert [get(listen) for _ in range(10)] == [200] * 10

        # one replica cancelled under traffic: no request lost, out of the pool within 5 s
        slurm(cluster, "scancel", str(jobs["web-0"]))
        cancelled = time.monotonic()
        answers = []
        while status(cluster, directory)["web-0"]["pool"] == "serving":
            assert time.monotonic() - cancelled < 5, "the cancelled replica is still in the pool"
            answers.append(get(listen))
        answers += [get(listen) for _ in range(10)]
        assert set(answers) == {200}

        # its job ended: the follower submits it again, and it serves again as a new job
        back = wait_until("web-0 serving again", lambda: (r := status(cluster, directory)["web-0"])["pool"] == "serving"
                          and r["job_id"] != jobs["web-0"] and r, 120, seen=lambda: status(cluster, directory))
        assert back["restarts"] == 1
        jobs["web-0"] = back["job_id"]
    finally:
        stopped = vgpu(cluster, "serve", "stop", str(directory))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the HAProxy" in stopped.stdout and "stopped the follower" in stopped.stdout
    assert str(jobs["web-0"]) in stopped.stdout  # the job it was submitted again as is cancelled too
    wait_for(cluster, list(jobs.values()), states=ENDED)
    wait_until("the router gone", lambda: refused(listen), 10)


def test_a_profiled_service_is_sized_for_its_rate_and_weighted_by_each_batch_s_throughput_on_each_gpu(
        cluster, cluster_engine):
    # measured on purpose against the GPUs' datasheet speeds: the T4 serves single requests fastest,
    # the H100 batches of 8
    rates = {1: {"t4": 90.0, "a100": 60.0, "h100": 30.0}, 8: {"t4": 100.0, "a100": 200.0, "h100": 400.0}}
    for batch, by_model in rates.items():
        for model, rate in by_model.items():
            store_curve(cluster_engine, "webprof", model, {50: (rate * 5 / 6, 20.0), 70: (rate * 7 / 6, 10.0)}, batch)
    listen = free_port(1, 29900)
    directory = output_dir(cluster) / "serve-profiled"
    # one replica on each model in turn; 130/s at 80% of each one's rate: 72 + 48 + 24, three replicas
    started = vgpu(cluster, "serve", "start", service_file(cluster, "prof", listen, free_port(3, 29910), replicas=None,
                                                           extra="Profile=webprof\nRate=130/s\nModel=t4,a100,h100\n"),
                   "--dir", str(directory), "--json")
    assert started.returncode == 0, started.stderr
    assert sorted(json.loads(started.stdout)["service"]["jobs"]) == ["prof-0", "prof-1", "prof-2"]
    try:
        replicas = wait_until("the replicas serving", lambda: (s := status(cluster, directory)) and all(
            r["pool"] == "serving" for r in s.values()) and s, 120, seen=lambda: status(cluster, directory))
        models = {name: GpuRecord.model_of(r["gpu"]) for name, r in replicas.items()}
        assert models == {"prof-0": "t4", "prof-1": "a100", "prof-2": "h100"}
        # at Share=60, each model's profile gives the rate halfway between its 50% and 70% points;
        # requests of a batch of 8 have their own backend, weighted by the batch of 8's curves
        for backend, batch in (("prof", 1), ("prof-b8", 8)):
            expected = weights({name: rates[batch][model] for name, model in models.items()})
            assert {name: r["weight_by_backend"][backend] for name, r in replicas.items()} == expected
        assert replicas["prof-0"]["weight"] == replicas["prof-0"]["weight_by_backend"]["prof"]
        assert get(listen) == 200 and get(listen, batch=8) == 200
    finally:
        stopped = vgpu(cluster, "serve", "stop", str(directory), "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert any(line.startswith("cancelled jobs") for line in json.loads(stopped.stdout)["stopped"])

    unmeasured = vgpu(cluster, "serve", "start", service_file(cluster, "noprof", listen, free_port(3, 29910),
                                                              extra="Profile=never-measured\n"),
                      "--dir", str(output_dir(cluster) / "serve-noprof"))
    assert unmeasured.returncode == 1
    assert "no profile of 'never-measured' is stored; measure it first" in unmeasured.stderr
    assert refused(listen)


def test_a_service_that_cannot_start_says_why_and_leaves_nothing_running(cluster):
    directory = output_dir(cluster) / "serve-taken"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = vgpu(cluster, "serve", "start", service_file(cluster, "taken", port, free_port(3, 29600)), "--dir",
                      str(directory))
    assert result.returncode == 1
    assert f"Listen=127.0.0.1:{port}: the router cannot listen there" in result.stderr
    assert not (directory / "service.json").exists()
    names = slurm(cluster, "squeue", "--noheader", "--format=%j").stdout.split()
    assert not [n for n in names if n.startswith("taken-")]

    # a slice no GPU can give: sbatch's refusal, and the router started for it is stopped again
    listen = free_port(1, 29700)
    result = vgpu(cluster, "serve", "start", service_file(cluster, "huge", listen, free_port(3, 29710), extra="Model=v100\n"),
                  "--dir", str(output_dir(cluster) / "serve-huge"))
    assert result.returncode == 1 and "service huge not started, nothing left running" in result.stderr
    assert "v100" in result.stderr  # what job_submit.lua said
    assert refused(listen)

    bad = output_dir(cluster) / "bad.svc"
    bad.write_text("Name=bad\nComand=serve %p\nShare=130\n")
    result = vgpu(cluster, "serve", "check", str(bad))
    assert result.returncode == 2
    for problem in ("unknown key 'Comand'; did you mean 'Command'?", "Share=130", "Command is missing"):
        assert problem in result.stderr


def test_a_replica_that_never_listens_is_shown_with_its_log(cluster):
    directory = output_dir(cluster) / "serve-mute"
    listen = free_port(1, 29800)
    started = vgpu(cluster, "serve", "start", service_file(cluster, "mute", listen, free_port(1, 29810), replicas=1,
                                                           command="echo no port %p; sleep 600"), "--dir", str(directory))
    assert started.returncode == 0, started.stderr
    try:
        mute = wait_until("the replica running", lambda: (r := status(cluster, directory)["mute-0"])["state"] == "RUNNING"
                          and "not listening" in r["pool"] and r, 120, seen=lambda: status(cluster, directory))
        assert mute["pool"].endswith(f"its log: {directory / 'mute-0.out'}")
        log = directory / "mute-0.out"
        wait_until("the replica's output", lambda: log.exists() and "no port" in log.read_text(), 30)
        assert get(listen) == 503  # the router answers, with no replica to send to
    finally:
        assert vgpu(cluster, "serve", "stop", str(directory)).returncode == 0
