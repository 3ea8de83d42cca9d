"""The router of a service is a real HAProxy (Debian's), driven through its admin socket: replicas
join and leave it live, their weights split the requests in hand, a replica that dies is out of the
pool within seconds without a request lost, and with none left a client gets a clear 503. The
replicas here are small HTTP servers on loopback, not inference on GPUs."""
from __future__ import annotations

import http.client
import http.server
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from slurm_vgpu.route.haproxy import (BATCH_HEADER, Endpoint, HAProxyError, Load, Runtime, batch_backends,
                                      check_config, config, sync)
from slurm_vgpu.route.serving import Meter
from slurm_vgpu.route.weights import MeasuredRates

SERVICE = "chat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """An HTTP server that answers its name; with ``hold`` set, it keeps each request in hand until
    ``release()``, so that a test sees how many requests the proxy gave it at once; with
    ``service_s``, it serves one request at a time, each in that long (a model of a replica's
    speed, not a GPU)."""

    def __init__(self, name: str, hold: bool = False, service_s: float = 0.0):
        self.name, self.in_hand, self.served = name, 0, 0
        self.lock, self.gate, self.serving = threading.Lock(), threading.Event(), threading.Lock()
        if not hold:
            self.gate.set()
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with replica.lock:
                    replica.in_hand += 1
                replica.gate.wait(30)
                if service_s:
                    with replica.serving:
                        time.sleep(service_s)
                body = replica.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with replica.lock:
                    replica.in_hand -= 1
                    replica.served += 1

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = Endpoint("127.0.0.1", self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.gate.set()

    def die(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(tmp_path: Path):
    yield from running_proxy(tmp_path)


@pytest.fixture
def batched_proxy(tmp_path: Path):
    """A service whose profile measured batches of 1, 8 and 32: a backend for each."""
    yield from running_proxy(tmp_path, batches=(1, 8, 32))


def running_proxy(tmp_path: Path, batches=()):
    listen = Endpoint("127.0.0.1", free_port())
    admin = tmp_path / "admin.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config(SERVICE, listen, admin, batches))
    check_config(cfg)
    process = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        if admin.exists():
            break
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    yield listen, Runtime(admin)
    process.terminate()
    process.wait(10)


def get(listen: Endpoint, batch: int | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection(listen.address, listen.port, timeout=30)
    try:
        conn.request("GET", "/", headers={BATCH_HEADER: str(batch)} if batch is not None else {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
    return found


def all_up(runtime: Runtime) -> None:
    """Until every server has passed its first health check (a new one starts down)."""
    until(lambda: all(s.up for s in runtime.servers(SERVICE).values()), timeout=5)


def split_of_eight(listen: Endpoint, fast: Replica, slow: Replica, batch: int | None = None) -> tuple[int, int]:
    """How 8 requests sent at once are in hand at the two held replicas; then all are answered."""
    fast.gate.clear()
    slow.gate.clear()
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(get, listen, batch) for _ in range(8)]
        until(lambda: fast.in_hand + slow.in_hand == 8)
        split = (fast.in_hand, slow.in_hand)
        fast.release()
        slow.release()
        assert [a.result()[0] for a in answers] == [200] * 8
    return split


def test_weights_split_the_requests_in_hand_and_change_live(proxy):
    listen, runtime = proxy
    fast, slow = Replica("fast", hold=True), Replica("slow", hold=True)
    assert sync(runtime, SERVICE, {"fast": fast.endpoint, "slow": slow.endpoint}, {"fast": 3, "slow": 1}) == [
        f"added fast at 127.0.0.1:{fast.endpoint.port}, weight 3", f"added slow at 127.0.0.1:{slow.endpoint.port}, weight 1"]
    all_up(runtime)
    # leastconn by weight: requests in hand per unit of weight stay level, 6 to 2
    assert split_of_eight(listen, fast, slow) == (6, 2)

    # the weights turn round without a reload: the slow replica now takes the larger part
    assert sync(runtime, SERVICE, {"fast": fast.endpoint, "slow": slow.endpoint}, {"fast": 1, "slow": 3}) == [
        "fast: weight 3 -> 1", "slow: weight 1 -> 3"]
    assert {s.name: s.weight for s in runtime.servers(SERVICE).values()} == {"fast": 1, "slow": 3}
    assert split_of_eight(listen, fast, slow) == (2, 6)
    assert (fast.served, slow.served) == (8, 8)


def test_the_meter_counts_each_replica_s_completions_and_the_time_it_had_requests_in_hand(proxy):
    listen, runtime = proxy
    fast, slow = Replica("fast", hold=True), Replica("slow", hold=True)
    sync(runtime, SERVICE, {"fast": fast.endpoint, "slow": slow.endpoint}, {"fast": 1, "slow": 1})
    all_up(runtime)
    meter = Meter(runtime)
    meter.sample()
    assert meter.take() == {}  # counters seen once: nothing to measure yet
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(get, listen) for _ in range(4)]
        until(lambda: fast.in_hand + slow.in_hand == 4)
        until(lambda: sum(load.in_hand for load in runtime.loads()[SERVICE].values()) == 4)
        for _ in range(3):
            meter.sample()
        fast.release()
        slow.release()
        assert [a.result()[0] for a in answers] == [200] * 4
    until(lambda: runtime.loads()[SERVICE] == {"fast": Load(2, 0), "slow": Load(2, 0)})
    meter.sample()  # 3 of the 4 samples found each replica busy
    taken = meter.take()
    assert {name: completed for (_, name), (completed, _, _) in taken.items()} == {"fast": 2, "slow": 2}
    for _, busy_s, elapsed_s in taken.values():
        assert busy_s == pytest.approx(elapsed_s * 3 / 4)
    meter.sample()
    assert {key: (c, b) for key, (c, b, _) in meter.take().items()} == {
        (SERVICE, "fast"): (0, 0.0), (SERVICE, "slow"): (0, 0.0)}


def test_measured_weights_follow_the_replicas_real_speeds(proxy):
    listen, runtime = proxy
    fast, slow = Replica("fast", service_s=0.01), Replica("slow", service_s=0.05)
    sync(runtime, SERVICE, {"fast": fast.endpoint, "slow": slow.endpoint}, {"fast": 1, "slow": 1})
    all_up(runtime)
    meter, measured = Meter(runtime), MeasuredRates({"fast": 1.0, "slow": 1.0})
    stop = threading.Event()

    def client():
        while not stop.is_set():
            get(listen)

    with ThreadPoolExecutor(6) as pool:
        for _ in range(6):
            pool.submit(client)
        for _ in range(6):  # 3 s, in rounds of 0.5 s of 25 samples
            for _ in range(25):
                meter.sample()
                time.sleep(0.02)
            for (_, name), (completed, busy_s, elapsed_s) in meter.take().items():
                measured.observe(name, completed, busy_s, elapsed_s)
        stop.set()
    # 5x apart while each serves one request at a time; a loaded machine adds to both, so at least 2x
    w = measured.weights()
    assert w["fast"] == 256 and w["slow"] < 128, (measured.rates, w)


def test_a_request_stating_its_batch_size_goes_by_that_batch_s_weights(batched_proxy):
    listen, runtime = batched_proxy
    small, large = Replica("small", hold=True), Replica("large", hold=True)
    endpoints = {"small": small.endpoint, "large": large.endpoint}
    # a GPU that serves single requests fast but large batches slowly, and one the other way round
    backend_of = batch_backends(SERVICE, (1, 8, 32))
    for backend, weights in ((backend_of[1], {"small": 3, "large": 1}), (backend_of[8], {"small": 1, "large": 1}),
                             (backend_of[32], {"small": 1, "large": 3})):
        sync(runtime, backend, endpoints, weights)
        until(lambda: all(s.up for s in runtime.servers(backend).values()), timeout=5)
    assert split_of_eight(listen, small, large) == (6, 2)  # no batch stated: the smallest's backend
    assert split_of_eight(listen, small, large, batch=1) == (6, 2)
    assert split_of_eight(listen, small, large, batch=5) == (4, 4)  # up to 8: the batch of 8's
    assert split_of_eight(listen, small, large, batch=32) == (2, 6)
    assert split_of_eight(listen, small, large, batch=500) == (2, 6)  # above every batch: the largest's


def test_a_replica_that_dies_leaves_the_pool_without_losing_a_request(proxy):
    listen, runtime = proxy
    a, b = Replica("a"), Replica("b")
    sync(runtime, SERVICE, {"a": a.endpoint, "b": b.endpoint}, {"a": 1, "b": 1})
    all_up(runtime)
    b.die()
    # before the health checks notice, a request that HAProxy sends to b is sent again, to a
    answers = [get(listen) for _ in range(10)]
    assert answers == [(200, "a")] * 10
    until(lambda: not runtime.servers(SERVICE)["b"].up, timeout=5)

    # the replica is requeued onto another port: it moves, and serves again
    moved = Replica("b")
    assert sync(runtime, SERVICE, {"a": a.endpoint, "b": moved.endpoint}, {}) == [
        f"removed b (127.0.0.1:{b.endpoint.port})", f"added b at 127.0.0.1:{moved.endpoint.port}, weight 1"]
    until(lambda: runtime.servers(SERVICE)["b"].up)
    assert {get(listen)[1] for _ in range(6)} == {"a", "b"}


def test_a_replica_joins_the_pool_only_once_it_answers(proxy):
    listen, runtime = proxy
    with socket.socket() as reserved:  # a replica still loading: its port is not listening yet
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        sync(runtime, SERVICE, {"loading": Endpoint("127.0.0.1", port)}, {})
        assert not runtime.servers(SERVICE)["loading"].up
        assert get(listen)[0] == 503
        reserved.listen()
        until(lambda: runtime.servers(SERVICE)["loading"].up, timeout=5)


def test_with_no_replica_left_a_client_gets_a_clear_503(proxy):
    listen, runtime = proxy
    only = Replica("only")
    sync(runtime, SERVICE, {"only": only.endpoint}, {})
    all_up(runtime)
    assert get(listen) == (200, "only")
    assert sync(runtime, SERVICE, {}, {}) == [f"removed only (127.0.0.1:{only.endpoint.port})"]
    assert runtime.servers(SERVICE) == {}
    status, body = get(listen)
    assert status == 503 and "No server is available to handle this request" in body


def test_bad_names_and_commands_say_what_haproxy_takes(proxy, tmp_path):
    _, runtime = proxy
    with pytest.raises(HAProxyError, match="letters, digits and _.:- only"):
        sync(runtime, SERVICE, {"my replica": Endpoint("127.0.0.1", 1)}, {})
    with pytest.raises(HAProxyError, match="No such server"):
        runtime.set_weight(SERVICE, "absent", 2)
    broken = tmp_path / "broken.cfg"
    broken.write_text(config(SERVICE, Endpoint("127.0.0.1", free_port()), tmp_path / "a.sock") + "    balance nonsense\n")
    with pytest.raises(HAProxyError, match="broken.cfg"):
        check_config(broken)
    with pytest.raises(HAProxyError, match="admin socket"):
        Runtime(tmp_path / "absent.sock").servers(SERVICE)
