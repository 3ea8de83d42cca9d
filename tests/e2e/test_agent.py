"""The node agent on a real Slurm with simulated GPUs and the fake MPS daemon: MPS supervision,
failed GPUs drained with their jobs requeued, memory caps, the SLO guard, metrics, and the silent
node named in the reason a waiting job reads."""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slurm_vgpu.adapters.gpus import SimulatedInventory
from slurm_vgpu.mps import GpuMps
from slurm_vgpu_dev import cluster as devcluster
from slurm_vgpu_dev.cluster import unified_hierarchy
from slurm_vgpu_dev.system import agent_metrics_port, dev_cluster
from slurm_vgpu.node.store import connect

from ..conftest import TEST_PORT, TEST_SLURM, new_database, slurm, stop_cluster
from .jobs import job, submit, wait_for
from .node_helpers import mps_state, node_config, placement, wait_started

pytestmark = pytest.mark.e2e

# agt1: the guard, quota and supervision tests share its T4; agt2: one GPU to fail by an MPS fault
# (A100) and one to lose (L40S); agt3: the node whose agent goes silent.
LAYOUT = """
[[node]]
name = "agt1"
cpus = 8
gpus = { t4 = 1 }

[[node]]
name = "agt2"
cpus = 8
gpus = { a100 = 1, l40s = 1 }

[[node]]
name = "agt3"
cpus = 4
gpus = { h100 = 1 }
"""
HEARTBEAT_TIMEOUT = 6


@pytest.fixture(scope="module")
def agents():
    directory = Path(tempfile.mkdtemp(prefix="vgpu-agent-test-", dir="/var/tmp"))
    directory.chmod(0o755)
    (directory / "layout.toml").write_text(LAYOUT)
    url = new_database()
    cluster = dev_cluster(directory, TEST_PORT + 70, layout=directory / "layout.toml", database_url=url,
                          release=TEST_SLURM)

    def agent_settings(c) -> None:
        with open(c.vgpu_conf, "a") as conf:
            conf.write(f"HpcJobMappingDir={c.dir}/jobmap/%n\nHeartbeatInterval=1\n"
                       f"HeartbeatTimeout={HEARTBEAT_TIMEOUT}\n")

    cluster.before_start.append(agent_settings)
    devcluster.up(cluster)
    yield cluster
    stop_cluster(cluster)


def gpu_uuid(cluster, node: str, model: str) -> str:
    inventory = SimulatedInventory(node_config(cluster).inventory_for(node))
    return next(g.uuid for g in inventory.gpus() if g.model == model)


def usage_dir(cluster, node: str) -> Path:
    return SimulatedInventory(node_config(cluster).inventory_for(node)).usage_dir


def fake_client(cluster, node: str, mib: int, util: float) -> str:
    """A job script running a fake CUDA client that writes its PID to ``out/ready-<job>``."""
    ready = f"{cluster.dir}/out/ready-$SLURM_JOB_ID"
    return (f"{sys.executable} -m slurm_vgpu_dev.fake_cuda --usage-dir {usage_dir(cluster, node)} "
            f"--mib {mib} --util {util} --ready {ready}")


def client_pid(cluster, job_id: int, timeout: float = 120.0) -> int:
    """The PID its fake CUDA client reported. As long as :func:`.jobs.wait_for` allows: the job
    may wait for an earlier test's epilog on a loaded machine; a timeout says where the job was."""
    path = cluster.dir / "out" / f"ready-{job_id}"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            state = job(cluster, job_id)
            pytest.fail(f"job {job_id}'s fake CUDA client never reported: {state['JobState']} on "
                        f"{state['NodeList'] or '-'}, {state['Reason']}, AdminComment {state['AdminComment']!r}")
        time.sleep(0.2)
    return int(path.read_text())


def until(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def events(cluster, kind: str, job_id: int | None = None, gpu: str | None = None) -> list[dict]:
    with connect(cluster.database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        rows = conn.execute("SELECT * FROM events WHERE kind = %s ORDER BY id", (kind,)).fetchall()
    return [r for r in rows if (job_id is None or r["job_id"] == job_id) and (gpu is None or r["gpu_uuid"] == gpu)]


def gpu_row(cluster, uuid: str) -> dict:
    with connect(cluster.database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute("SELECT * FROM gpus WHERE uuid = %s", (uuid,)).fetchone()


def scrape(cluster, node: str) -> dict[str, list]:
    position = [n.name for n in cluster.nodes()].index(node)
    with urllib.request.urlopen(f"http://127.0.0.1:{agent_metrics_port(cluster, position)}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def job_sample(found: dict, name: str, job_id: int):
    return next((s for s in found.get(name, []) if s.labels.get("hpc_job") == str(job_id)), None)


class freezer_state:
    """A job's freezer state as cgroup v1 names it (FROZEN, THAWED): v1's freezer.state of the job's
    cgroup, or on cgroup v2 (24.11 and 26.05 nodes) ``cgroup.events`` of the cgroup of the job's
    process (the guard freezes the task levels), found from the process's /proc/<pid>/cgroup."""

    def __init__(self, cluster, node: str, job_id: int, pid: int):
        if cluster.cgroup_root is None:
            self.path = Path(f"/sys/fs/cgroup/freezer/slurm_{node}/uid_0/job_{job_id}/freezer.state")
        else:
            unified = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                           if line.startswith("0::"))
            self.path = unified_hierarchy() / unified[3:].lstrip("/") / "cgroup.events"

    def read_text(self) -> str:
        text = self.path.read_text()
        if self.path.name == "freezer.state":
            return text
        return "FROZEN" if "frozen 1" in text.splitlines() else "THAWED"


def cancel(cluster, *job_ids: int) -> None:
    slurm(cluster, "scancel", *map(str, job_ids))
    wait_for(cluster, job_ids)


def test_a_killed_mps_control_daemon_is_restarted_with_the_running_slices_caps(agents):
    job_id = submit(agents, "--gres=vgpu:t4:40", script="sleep 300")
    wait_started(agents, [job_id])
    uuid = placement(agents, job_id)["gpu_uuid"]
    pid_file = GpuMps.of(node_config(agents), uuid).control.pid_file
    killed = int(pid_file.read_text())
    os.kill(killed, signal.SIGKILL)

    def restarted() -> int | None:
        pid = GpuMps.of(node_config(agents), uuid).control.daemon_pid()
        return pid if pid not in (None, killed) else None

    until("the control daemon to be restarted", restarted)
    until("the restarted daemon to cap the running slice",
          lambda: any(c.startswith("set_active_thread_percentage") and c.endswith(" 40")
                      for c in mps_state(agents, uuid)["commands"]))
    assert "start_server -uid 0" in mps_state(agents, uuid)["commands"]
    until("the restart to be recorded", lambda: events(agents, "mps-restarted", gpu=uuid))
    assert job(agents, job_id)["JobState"] == "RUNNING"
    cancel(agents, job_id)


def test_a_process_over_its_memory_cap_is_killed_with_a_reason_and_its_neighbour_is_untouched(agents):
    neighbour = submit(agents, "--gres=vgpu:t4:30", "--vgpu-mem=2G",
                       script=fake_client(agents, "agt1", mib=512, util=0.1))
    offender = submit(agents, "--gres=vgpu:t4:30", "--vgpu-mem=1G",
                      script=fake_client(agents, "agt1", mib=2048, util=0.1))
    neighbour_pid = client_pid(agents, neighbour)
    ended = wait_for(agents, [offender])[offender]
    assert ended["JobState"] == "FAILED"
    assert 'agent="process' in ended["AdminComment"] and "over the job's cap of 1024 MiB" in ended["AdminComment"]
    assert "2048 MiB" in events(agents, "memory-cap-exceeded", job_id=offender)[0]["message"]
    assert job(agents, neighbour)["JobState"] == "RUNNING"
    os.kill(neighbour_pid, 0)  # still alive
    assert not events(agents, "memory-cap-exceeded", job_id=neighbour)
    cancel(agents, neighbour)


def test_a_jobs_processes_are_held_to_its_cap_together_and_the_largest_is_ended(agents):
    """Each of two processes is under the job's 1 GiB cap (MPS's per-client limit would pass both);
    together they are over it, and only the larger is ended: the rest fit."""
    large = fake_client(agents, "agt1", mib=700, util=0.1)
    small = fake_client(agents, "agt1", mib=500, util=0.1).replace("ready-$SLURM_JOB_ID", "ready-$SLURM_JOB_ID-small")
    job_id = submit(agents, "--gres=vgpu:t4:30", "--vgpu-mem=1G", script=f"{large} & {small} & wait")
    large_pid = client_pid(agents, job_id)
    small_pid = int(until("the small client's report", lambda: _read(agents.dir / "out" / f"ready-{job_id}-small")))
    (event,) = until("the cap enforced", lambda: events(agents, "memory-cap-exceeded", job_id=job_id))
    assert "used 1200 MiB of GPU memory together" in event["message"] and f"terminated {large_pid}," in event["message"]
    until("the larger client's end", lambda: not Path(f"/proc/{large_pid}").exists())
    os.kill(small_pid, 0)  # still alive
    state = job(agents, job_id)
    assert state["JobState"] == "RUNNING"
    assert 'agent="processes of the job used 1200 MiB' in state["AdminComment"]
    cancel(agents, job_id)


def _read(path: Path) -> str | None:
    return path.read_text().strip() or None if path.exists() else None


def test_the_guard_freezes_best_effort_while_latency_is_busy_and_lets_go_when_it_idles(agents):
    latency = submit(agents, "--gres=vgpu:t4:30", "--vgpu-class=latency",
                     script=fake_client(agents, "agt1", mib=100, util=0.9))
    best_effort = submit(agents, "--gres=vgpu:t4:30", "--vgpu-class=best-effort",
                         script=fake_client(agents, "agt1", mib=100, util=0.5))
    client_pid(agents, latency)
    state = freezer_state(agents, "agt1", best_effort, client_pid(agents, best_effort))
    until("the best-effort job to be frozen", lambda: state.read_text().strip() == "FROZEN")
    released_before = len(events(agents, "guard-released"))
    cancel(agents, latency)
    until("the guard to let go", lambda: len(events(agents, "guard-released")) > released_before)
    until("the metrics to show it running freely",
          lambda: job_sample(scrape(agents, "agt1"), "slurm_vgpu_job_throttled", best_effort).value == 0)
    assert state.read_text().strip() == "THAWED"
    assert job(agents, best_effort)["JobState"] == "RUNNING"
    cancel(agents, best_effort)


def test_metrics_and_dcgm_job_mapping_show_a_running_slice(agents):
    job_id = submit(agents, "--gres=vgpu:t4:25", "--vgpu-mem=3G", script=fake_client(agents, "agt1", mib=1024, util=0.2))
    client_pid(agents, job_id)
    uuid = gpu_uuid(agents, "agt1", "t4")

    def metrics_with_its_process_alone():
        """Earlier tests' slices on this GPU may still be ending (their epilogs run late under load)."""
        found = scrape(agents, "agt1")
        used = job_sample(found, "slurm_vgpu_job_memory_used_bytes", job_id)
        gpu = next(s for s in found["slurm_vgpu_gpu_slices"] if s.labels["UUID"] == uuid)
        return found if used and used.value > 0 and gpu.value == 1 else None

    found = until("the job's process alone in the metrics", metrics_with_its_process_alone)
    gpu = next(s for s in found["slurm_vgpu_gpu_slices"] if s.labels["UUID"] == uuid)
    assert (gpu.labels["gpu"], gpu.labels["Hostname"], gpu.value) == ("0", "agt1", 1)
    assert job_sample(found, "slurm_vgpu_job_share_ratio", job_id).value == 0.25
    assert job_sample(found, "slurm_vgpu_job_memory_limit_bytes", job_id).value == 3 * 2**30
    assert job_sample(found, "slurm_vgpu_job_memory_used_bytes", job_id).value == 2**30
    assert job_sample(found, "slurm_vgpu_job_utilization_ratio", job_id).value == pytest.approx(0.8)
    assert (agents.dir / "jobmap" / "agt1" / "0").read_text() == f"{job_id}\n"
    cancel(agents, job_id)
    until("the mapping file to go", lambda: not (agents.dir / "jobmap" / "agt1" / "0").exists())


def test_an_mps_fault_drains_the_gpu_and_requeues_its_job_with_the_reason(agents):
    job_id = submit(agents, "--gres=vgpu:a100:30", script="sleep 300")
    wait_started(agents, [job_id])
    uuid = placement(agents, job_id)["gpu_uuid"]
    GpuMps.of(node_config(agents), uuid).control.command("simulate_fault")
    waiting = until("the job to wait with the fault as its reason",
                    lambda: (j := job(agents, job_id))["JobState"] == "PENDING" and "MPS fatal fault" in j["AdminComment"] and j)
    assert "vgpu-state=unplaced" in waiting["AdminComment"]
    gpu = gpu_row(agents, uuid)
    assert gpu["state"] == "draining" and gpu["state_reason"].startswith("MPS fatal fault: [")
    failed = placement(agents, job_id)
    assert failed["state"] == "failed" and "MPS fatal fault" in failed["reason"]
    assert "requeued: agt2 GPU" in events(agents, "job-requeued", job_id=job_id)[0]["message"]
    assert len(events(agents, "gpu-fault", gpu=uuid)) == 1
    slurm(agents, "scancel", str(job_id))


def test_a_lost_gpu_is_drained_and_its_job_requeued(agents):
    job_id = submit(agents, "--gres=vgpu:l40s:30", script="sleep 300")
    wait_started(agents, [job_id])
    uuid = placement(agents, job_id)["gpu_uuid"]
    path = Path(node_config(agents).inventory_for("agt2"))
    doc = json.loads(path.read_text())
    next(g for g in doc["gpus"] if g["uuid"] == uuid)["lost"] = True
    path.write_text(json.dumps(doc))
    until("the job to wait because its GPU was lost",
          lambda: job(agents, job_id)["JobState"] == "PENDING" and "GPU lost" in job(agents, job_id)["AdminComment"])
    assert gpu_row(agents, uuid)["state"] == "draining"
    assert placement(agents, job_id)["state"] == "failed"
    slurm(agents, "scancel", str(job_id))


def test_a_job_waiting_for_a_silent_nodes_gpu_is_told_which_node(agents):
    agent_pid = json.loads(agents.state_file.read_text())["services"]["agent-agt3"]["pid"]
    os.kill(agent_pid, signal.SIGTERM)
    time.sleep(HEARTBEAT_TIMEOUT + 1)  # let its last heartbeat age past HeartbeatTimeout
    job_id = submit(agents, "--gres=vgpu:h100:10", script="sleep 1")
    until("the silent node in the job's reason",
          lambda: "node agt3's agent is silent" in job(agents, job_id)["AdminComment"])
    explained = slurm(agents, sys.executable, "-m", "slurm_vgpu", "explain", str(job_id)).stdout
    assert "node agt3's agent is silent" in explained
    devcluster.restart(agents, "agent-agt3")
    assert wait_for(agents, [job_id])[job_id]["JobState"] == "COMPLETED"
