"""The GPU validation kit (``tests/gpu/run``) where there is no GPU: it lists every check, skipped with
NVML's own reason, exits 0, and its ``--json`` holds the same rows as its table. Its MPS steps are
also driven against the fake control daemon, with a simulated GPU record (no GPU is behind it), to
hold that every daemon it starts is stopped again, and its SLO guard wiring against fake CUDA clients."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_vgpu.adapters.gpus import GpuRecord, InventoryError, NvmlInventory, SimulatedInventory
from tests.gpu.kit.checks import CHECKS, Kit
from tests.gpu.kit.clients import Client, ClientError
from tests.gpu.kit.guard_driver import GuardDriver
from tests.gpu.kit.table import Row, exit_status

ROOT = Path(__file__).resolve().parents[2]
FAKE_MPS = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"


def nvml_reason() -> str:
    try:
        NvmlInventory().gpus()
    except InventoryError as exc:
        return str(exc)
    pytest.skip("NVML works here: the kit measures this GPU instead (run tests/gpu/run)")


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may never reap a daemon that quit)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def table_rows(stdout: str) -> list[dict]:
    """The printed table back as rows: its header, a rule, then one line per check."""
    header, rule, *lines = stdout.splitlines()
    assert header.split(" | ")[:3] == ["check".ljust(len(header.split(" | ")[0])), *header.split(" | ")[1:3]]
    rows = []
    for line in lines:
        check, result, figure, *expected = [cell.strip() for cell in line.split(" | ")]
        rows.append({"check": check, "result": result, "figure": figure, "expected": " | ".join(expected)})
    return rows


def test_without_a_gpu_every_check_is_listed_skipped_with_nvmls_reason(tmp_path):
    reason = nvml_reason()
    out = tmp_path / "table.json"
    result = subprocess.run([sys.executable, "tests/gpu/run", "--quick", "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    printed = table_rows(result.stdout)
    assert [r["check"] for r in printed] == list(CHECKS)
    assert all(r["result"] == f"skipped: no GPU ({reason})" and r["figure"] == "" for r in printed)
    assert [r["expected"] for r in printed] == list(CHECKS.values())
    assert json.loads(out.read_text()) == printed


def test_a_failed_or_broken_check_fails_the_run_and_a_skipped_one_does_not():
    assert exit_status([Row("a", "pass"), Row("b", "skipped: no GPU (x)")]) == 0
    assert exit_status([Row("a", "pass"), Row("b", "FAIL")]) == 1
    assert exit_status([Row("a", "error: ClientError: client exited 1")]) == 1


def test_the_kit_caps_each_gpus_server_and_stops_every_daemon_it_started():
    """Against the fake MPS daemon: two simulated GPUs (records only), one daemon each."""
    kit = Kit(mps_binary=FAKE_MPS)
    kit.gpus = [GpuRecord(i, f"GPU-kit-{i}", "NVIDIA H100 80GB HBM3", "h100", 132, 81559, "9.0") for i in range(2)]
    try:
        result, figure = kit.mps_daemons()
        daemons = [c.daemon_pid() for c in kit.controls]
        assert result == "pass", figure
        assert len(set(daemons)) == 2 and None not in daemons
        assert figure.count("read back 30.0 / 2048M") == 2
    finally:
        result, figure = kit.stop_mps()
    assert (result, figure) == ("pass", "stopped 2 daemon(s), 2 server(s)")
    assert not any(c.running() for c in kit.controls)
    assert not [pid for pid in [*daemons, *kit.servers] if alive(pid)]
    assert kit.run_dir is not None and kit.run_dir.exists()  # run() removes it; stop_mps alone does not


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_kits_guard_holds_the_trainer_by_signals_while_the_latency_client_is_busy(tmp_path):
    """A simulated GPU (an inventory file) and fake CUDA clients reporting their SM use, as NVML would:
    the guard's own decisions freeze the trainer for part of each period, never the latency client,
    and nothing is left frozen once the guard stops."""
    gpu = GpuRecord(0, "GPU-kit-guard", "NVIDIA H100 80GB HBM3", "h100", 132, 81559, "9.0")
    SimulatedInventory.write(tmp_path / "node.json", "node", [gpu])
    inventory = SimulatedInventory(tmp_path / "node.json")
    clients = []
    try:
        for name, util in (("latency", "0.5"), ("trainer", "0.9")):
            ready = tmp_path / f"{name}.ready"
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "slurm_vgpu_dev.fake_cuda", "--usage-dir", str(inventory.usage_dir),
                 "--mib", "512", "--util", util, "--ready", str(ready)],
                env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu.uuid}, stdout=subprocess.DEVNULL))
            deadline = time.monotonic() + 60
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ready.exists(), f"the fake {name} client did not report its use"
        latency, trainer = clients
        seen = {latency.pid: set(), trainer.pid: set()}
        with GuardDriver(gpu, latency.pid, trainer.pid, 50, inventory) as driver:
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                for pid in seen:
                    seen[pid].add(process_state(pid))
                time.sleep(0.02)
        assert "T" in seen[trainer.pid] and seen[trainer.pid] - {"T"}
        assert "T" not in seen[latency.pid]
        assert process_state(trainer.pid) != "T"
        assert driver.freezes >= 2 and driver.busy_looks == driver.looks >= 2
        assert driver.how() == "SIGSTOP/SIGCONT (no Slurm cgroup)"
    finally:
        for client in clients:
            client.kill()
            client.wait()


def test_a_client_that_cannot_start_is_reported_in_its_own_words():
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: the client would start")
    client = Client("infer", dict(os.environ))
    with pytest.raises(ClientError, match="No module named 'torch'"):
        client.wait_ready()
    client.stop()
    assert client.process.returncode == 1 and client not in Client.live
