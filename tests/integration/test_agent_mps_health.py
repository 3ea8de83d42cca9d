"""The agent's MPS supervision against a control daemon that hangs with its PID alive: the fake
daemon (it speaks nvidia-cuda-mps-control's protocol; ``simulate_hang`` is its own) and real
Postgres for the slices and the events. The PID file alone says such a daemon is healthy; the agent
asks it a question, and at the second unanswered one kills it with its servers and starts it again,
the running slice's caps set again."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from slurm_vgpu.agent import daemon, health
from slurm_vgpu.agent.metrics import AgentMetrics
from slurm_vgpu.agent.observe import Slice
from slurm_vgpu.config import Config
from slurm_vgpu.db.models import Event
from slurm_vgpu.mps import GpuMps
from slurm_vgpu.mps.control import process_uid
from slurm_vgpu.node import store
from slurm_vgpu.policy import SloClass
from slurm_vgpu_dev.layout import simulated_gpu

from .cli_support import insert_inventory, place

FAKE = f"{sys.executable} -m slurm_vgpu_dev.fake_mps"
UID = os.getuid()
GPU = simulated_gpu("gpu01", 0, "h100")


@pytest.fixture
def run_dir():
    """Short: RunDir/mps/<uuid>/pipe/control must fit a socket path."""
    directory = Path(tempfile.mkdtemp(prefix="vgpu-", dir="/tmp"))
    yield directory
    control = GpuMps.of(Config(run_dir=directory, mps_control=FAKE), GPU.uuid).control
    if control.daemon_pid() is not None:
        control.kill(control.daemon_pid())  # answers or not
    shutil.rmtree(directory)


def test_a_daemon_that_stops_answering_is_killed_with_its_servers_and_restarted_capped(
        clean_db, database_url, run_dir, monkeypatch):
    monkeypatch.setattr(health, "HEALTH_CHECK", 0.0)  # a question every round
    config = Config(database_url=database_url, run_dir=run_dir, mps_control=FAKE, mps_health_timeout=0.5,
                    node_name="gpu01", inventory=str(run_dir / "%n.json"))  # a simulated GPU (its compute mode)
    insert_inventory(clean_db)
    place(clean_db, 7, "gpu01", 0, uid=UID, share=25, memory_mib=512, state="pinned")
    mps = GpuMps.of(config, GPU.uuid)
    with store.connect(database_url) as conn:
        placement = conn.execute("SELECT id FROM placements WHERE job_id = 7").fetchone()[0]
        with mps.serving(conn, UID, placement):
            conn.execute("UPDATE placements SET state = 'running' WHERE id = %s", (placement,))
    wedged, server = mps.control.daemon_pid(), mps.control.servers()[UID]
    mps.control.command("simulate_hang")
    agent = daemon.Agent(config, clean_db, slurm=None, inventory=None, metrics=AgentMetrics("gpu01"),
                         freezer=None, settings=None, job_of_sluid=None)
    slices = [Slice(7, GPU.uuid, UID, 25, 512, SloClass.THROUGHPUT, "running")]

    agent._supervise([GPU], slices)  # one miss: slow, maybe, not yet wedged
    assert mps.control.daemon_pid() == wedged and process_uid(server) == UID
    assert not events(clean_db)

    agent._supervise([GPU], slices)  # the second in a row
    restarted = mps.control.daemon_pid()
    assert restarted not in (None, wedged) and mps.control.answers(timeout=10)
    assert ended(server)
    new_server = mps.control.servers()[UID]
    assert new_server != server
    assert mps.control.command(f"get_active_thread_percentage {new_server}") == ["25.0"]
    assert mps.control.command(f"get_device_pinned_mem_limit {new_server} 0") == ["512M"]
    (event,) = events(clean_db)
    assert event.kind == "mps-wedged" and event.gpu_uuid == GPU.uuid
    assert f"daemon {wedged} answered no question" in event.message and f"servers [{server}]" in event.message
    assert agent.metrics.actions[("mps_wedged_restart", GPU.uuid)] == 1

    agent._supervise([GPU], slices)  # the new daemon answers: nothing more is done
    assert mps.control.daemon_pid() == restarted and len(events(clean_db)) == 1


def events(engine: sa.Engine) -> list[Event]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(Event).order_by(Event.id)).all())


def ended(pid: int) -> bool:
    """Gone, or a zombie its new parent has not reaped yet."""
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
