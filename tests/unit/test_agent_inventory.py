"""Simulated GPUs: a GPU marked lost disappears, and fake CUDA clients report their processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from slurm_vgpu.adapters.gpus import GpuProcess, SimulatedInventory
from slurm_vgpu_dev.layout import simulated_gpu


def inventory(tmp_path, lost_index: int | None = None) -> SimulatedInventory:
    path = tmp_path / "n1.json"
    SimulatedInventory.write(path, "n1", [simulated_gpu("n1", i, "t4") for i in range(2)])
    if lost_index is not None:
        doc = json.loads(path.read_text())
        doc["gpus"][lost_index]["lost"] = True
        path.write_text(json.dumps(doc))
    return SimulatedInventory(path)


def test_a_gpu_marked_lost_is_not_listed(tmp_path):
    assert [g.index for g in inventory(tmp_path).gpus()] == [0, 1]
    assert [g.index for g in inventory(tmp_path, lost_index=0).gpus()] == [1]


def test_a_fake_cuda_client_is_a_process_of_its_gpu_until_it_exits(tmp_path):
    gpus = inventory(tmp_path)
    uuid = gpus.gpus()[0].uuid
    ready = tmp_path / "ready"
    client = subprocess.Popen(
        [sys.executable, "-m", "slurm_vgpu_dev.fake_cuda", "--usage-dir", str(gpus.usage_dir),
         "--mib", "700", "--util", "0.4", "--ready", str(ready)],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": uuid},
    )
    try:
        for _ in range(200):
            if ready.exists():
                break
            time.sleep(0.05)
        assert gpus.processes(uuid) == [GpuProcess(client.pid, 700, 0.4)]
        assert gpus.utilization(uuid) == 0.4
        assert gpus.processes(gpus.gpus()[1].uuid) == []
    finally:
        client.terminate()
        client.wait()
    assert gpus.processes(uuid) == []


def test_a_report_left_by_a_dead_client_is_ignored(tmp_path):
    gpus = inventory(tmp_path)
    uuid = gpus.gpus()[0].uuid
    (gpus.usage_dir / uuid).mkdir(parents=True)
    (gpus.usage_dir / uuid / str(2**22 + 4321)).write_text('{"used_mib": 100, "sm_util": 0.1, "started": 1}')
    assert gpus.processes(uuid) == []


def test_a_report_left_by_a_killed_client_is_not_read_as_the_next_process_with_its_pid(tmp_path):
    """PIDs come round again: the record of a client killed unclean names a PID that a later,
    unrelated process may hold. Modelled here by rewriting a live process's record with another
    start time, as its PID's earlier owner would have left it."""
    gpus = inventory(tmp_path)
    uuid = gpus.gpus()[0].uuid
    report = gpus.report_usage(uuid, os.getpid(), used_mib=100, sm_util=0.1)
    assert [p.pid for p in gpus.processes(uuid)] == [os.getpid()]
    doc = json.loads(report.read_text())
    report.write_text(json.dumps({**doc, "started": doc["started"] - 1}))
    assert gpus.processes(uuid) == []
