"""What an agent records of its GPUs when it starts, against a real Postgres: each GPU's speed is
the site's GpuSpeed, else the datasheet's; a model of neither is recorded as an A100 and said aloud
(a log line and an event naming the key to add)."""
from __future__ import annotations

import json
import logging

import psycopg

from slurm_vgpu.adapters.gpus import SimulatedInventory
from slurm_vgpu.agent.inventory import register
from slurm_vgpu.node.store import connect

GOLDEN_GPU = {"name": "NVIDIA H100 80GB HBM3", "model": "h100", "sm_count": 132, "memory_mib": 81559,
              "compute_capability": "9.0"}


def inventory(tmp_path, *models: tuple[str, str]) -> SimulatedInventory:
    """Simulated GPUs (a file in the NVML inventory's shape; no GPU here) of these (name, model)."""
    gpus = [{**GOLDEN_GPU, "index": i, "minor": i, "uuid": f"GPU-{i}", "name": name, "model": model}
            for i, (name, model) in enumerate(models)]
    path = tmp_path / "gpu01.json"
    path.write_text(json.dumps({"node": "gpu01", "gpus": gpus}))
    return SimulatedInventory(str(path))


def speeds(url: str) -> dict[str, float]:
    with connect(url) as conn:
        return dict(conn.execute("SELECT model, speed FROM gpus").fetchall())


def test_speeds_come_from_gpu_speed_then_the_datasheet_and_an_unknown_model_is_said_aloud(
        clean_db, tmp_path, caplog):
    url = clean_db.url.render_as_string(hide_password=False).replace("+psycopg", "")
    gpus = inventory(tmp_path, ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA B200", "b200"))
    with caplog.at_level(logging.WARNING, logger="slurm_vgpu.agent"):
        assert register(clean_db, "gpu01", gpus, speeds={"h200": 3.6}) == 3
    assert speeds(url) == {"h100": 3.2, "h200": 3.6, "b200": 1.0}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "GPU model b200 has no speed in GpuSpeed or the datasheet table, so it counts as an A100" in warning
    assert "add GpuSpeed=b200:<its throughput relative to an A100> to slurm-vgpu.conf" in warning
    with connect(url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        (event,) = conn.execute("SELECT * FROM events WHERE kind = 'gpu-speed-unknown'").fetchall()
    assert event["node"] == "gpu01" and "b200" in event["message"]
    caplog.clear()
    register(clean_db, "gpu01", gpus, speeds={"h200": 3.6, "b200": 7.2})  # the admin added it; the agent restarts
    assert speeds(url)["b200"] == 7.2 and not caplog.records


def test_a_speed_workloads_profile_comes_before_gpu_speed_and_the_datasheet(clean_db, tmp_path, caplog):
    """Profiles written as `slurm-vgpu profile` writes them; the throughputs are made up."""
    url = clean_db.url.render_as_string(hide_password=False).replace("+psycopg", "")
    with connect(url) as conn:
        for model, share, batch, throughput in [("h100", 100, 1, 1500.0), ("h100", 100, 8, 9000.0),
                                                ("h100", 50, 1, 1400.0), ("b200", 100, 1, 3000.0)]:
            conn.execute("INSERT INTO profiles (name, model, share, batch, throughput, p50_ms, p99_ms) "
                         "VALUES ('resnet50', %s, %s, %s, %s, 1, 2)", (model, share, batch, throughput))
    gpus = inventory(tmp_path, ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA B200", "b200"), ("Tesla T4", "t4"))
    with caplog.at_level(logging.WARNING, logger="slurm_vgpu.agent"):
        register(clean_db, "gpu01", gpus, speeds={"b200": 5.0}, speed_workload="resnet50")
    # anchored on the b200 (the measured model of the highest known speed: 5.0, the site's GpuSpeed);
    # the h100 measured half its throughput at batch 1; the t4, not measured, keeps the datasheet's
    assert speeds(url) == {"h100": 2.5, "b200": 5.0, "t4": 0.21}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "SpeedWorkload resnet50 has no profile at a share of 100 on t4" in warning
    caplog.clear()
    register(clean_db, "gpu01", gpus, speed_workload="bert")  # no profile at all: GpuSpeed, else the datasheet
    assert speeds(url) == {"h100": 3.2, "b200": 1.0, "t4": 0.21}
