"""Shared by the admin CLI tests: run ``slurm-vgpu`` in-process against the test database, a fixed
inventory of rows, and a stand-in for Slurm's ``squeue``/``scontrol`` that records what it was told."""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from slurm_vgpu.cli import main
from slurm_vgpu.db.models import Gpu, Node, Placement
from slurm_vgpu_dev.layout import simulated_gpu

# gpu01: 2 x H100, gpu02: A100 + T4 (the same GPUs as tests/golden/inventory).
INVENTORY = {"gpu01": ["h100", "h100"], "gpu02": ["a100", "t4"]}


def gpu_uuid(node: str, index: int) -> str:
    return simulated_gpu(node, index, INVENTORY[node][index]).uuid


def insert_inventory(engine: sa.Engine, heartbeat_age_s: dict[str, float] | None = None) -> None:
    """The INVENTORY's nodes and GPUs, every agent heartbeat fresh unless ``heartbeat_age_s`` says."""
    ages = heartbeat_age_s or {}
    with engine.begin() as conn:
        for node, models in INVENTORY.items():
            conn.execute(sa.insert(Node).values(
                name=node, agent_version="test",
                heartbeat_at=sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, ages.get(node, 0.0)),
            ))
            for index, model in enumerate(models):
                gpu = simulated_gpu(node, index, model)
                conn.execute(sa.insert(Gpu).values(
                    uuid=gpu.uuid, node=node, index=index, minor=gpu.minor, name=gpu.name, model=model, gres_type=gpu.gres_type,
                    sm_count=gpu.sm_count, memory_mib=gpu.memory_mib, compute_capability=gpu.compute_capability,
                ))


def place(engine: sa.Engine, job_id: int, node: str, index: int, *, uid: int = 0, share: int = 30,
          memory_mib: int | None = None, slo_class: str = "throughput", state: str = "running",
          whole: bool = False) -> None:
    """Insert a placement (``whole``: of a whole GPU); it goes through the capacity guard like any writer's."""
    with engine.begin() as conn:
        conn.execute(sa.insert(Placement).values(
            job_id=job_id, gpu_uuid=gpu_uuid(node, index), uid=uid, share=share, requested_share=share,
            memory_mib=memory_mib, slo_class=slo_class, state=state, whole=whole,
        ))


@dataclass
class Cli:
    """``slurm-vgpu`` with the test database and a config file of this test."""

    database_url: str
    config: Path
    engine: sa.Engine  # the same database, for inserting rows and checking what a command did

    def __call__(self, *args: str) -> Result:
        env = {"SLURM_VGPU_DATABASE_URL": self.database_url, "SLURM_VGPU_CONF": str(self.config)}
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    def json(self, *args: str) -> dict:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli(clean_db, database_url, tmp_path) -> Cli:
    config = tmp_path / "slurm-vgpu.conf"
    config.write_text("HeartbeatTimeout=30\n")
    return Cli(database_url, config, clean_db)


@dataclass
class FakeSlurm:
    """``squeue --json`` answers from ``jobs`` (and ``squeue --format=%V`` with their submit time),
    ``sinfo`` from ``nodes`` (the inventory's nodes,
    idle in partition debug, their CPUs and memory unknown, unless set); every
    ``scontrol``/``scancel`` call is logged (and answered with nothing: no reservations)."""

    bin_dir: Path
    log: Path

    def set_jobs(self, jobs: list[dict]) -> None:
        (self.bin_dir / "squeue.json").write_text(json.dumps({"jobs": jobs}))

    def set_nodes(self, lines: list[str]) -> None:
        """``sinfo --Format=...`` lines, as the adapter asks for them (NodeList|State|Partition|...)."""
        (self.bin_dir / "sinfo.txt").write_text("".join(f"{line}\n" for line in lines))

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> FakeSlurm:
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    log = tmp_path / "slurm-calls.jsonl"
    scripts = {
        # --format=%V: the submit time of the job --jobs names (the adapter's same_job), else the JSON
        "squeue": (f'#!/usr/bin/env python3\nimport json, sys\ntext = open("{bin_dir}/squeue.json").read()\n'
                   'ids = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--jobs=")]\n'
                   'if "--format=%V" not in sys.argv: print(text)\n'
                   'else: print(*(j["submit_time"] for j in json.loads(text)["jobs"] if str(j["job_id"]) in ids))\n'),
        "sinfo": f'#!/bin/sh\ncat "{bin_dir}/sinfo.txt"\n',
        "scontrol": f'#!/usr/bin/env python3\nimport json, sys\nopen("{log}", "a").write(json.dumps(sys.argv) + "\\n")\n',
    }
    scripts["scancel"] = scripts["scontrol"]
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    fake = FakeSlurm(bin_dir, log)
    fake.set_jobs([])
    fake.set_nodes([f"{node}|idle|debug*||||" for node in INVENTORY])
    return fake


def slurm_job(job_id: int, comment: str, *, state: str = "PENDING", uid: int = 0, user: str = "root",
              submit_time: int = 1_700_000_000) -> dict:
    """A job as squeue --json (22.05) shows it."""
    return {"job_id": job_id, "user_id": uid, "user_name": user, "job_state": state, "priority": 1,
            "submit_time": submit_time, "nodes": "", "tres_per_node": "", "admin_comment": comment}
