"""Submitting and watching jobs on the test cluster."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from slurm_vgpu.adapters.slurm import job_state, number, tres_per_node

from ..conftest import slurm

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


def output_dir(cluster) -> Path:
    """Job output lives with the cluster: job ids restart at 1 in every new cluster."""
    path = cluster.dir / "out"
    path.mkdir(exist_ok=True)
    path.chmod(0o1777)
    return path


def submit(cluster, *options: str, script: str = "hostname", user: str | None = None) -> int:
    result = slurm(cluster, "sbatch", "--parsable", "-o", f"{output_dir(cluster)}/%j.out", *options,
                   "--wrap", script, user=user, check=False)
    assert result.returncode == 0, f"sbatch {' '.join(options)} failed: {result.stderr.strip()}"
    return int(result.stdout.strip().split(";")[0])


def submit_fails(cluster, *options: str, user: str | None = None) -> str:
    """Submit a job that must be refused; returns what sbatch said."""
    result = slurm(cluster, "sbatch", *options, "--wrap", "true", user=user, check=False)
    assert result.returncode != 0, f"sbatch {' '.join(options)} was accepted: {result.stdout}"
    return result.stderr


def jobs(cluster) -> dict[int, dict[str, str]]:
    """Every job slurmctld knows, from ``squeue --json`` (on 22.05 it ignores filters and includes
    ended jobs; 23.02+ need ``--states=all`` for them), under the names and in the forms of 22.05's
    ``scontrol show job`` (the adapter's own readings of the newer JSON shapes)."""
    doc = json.loads(slurm(cluster, "squeue", "--json", "--states=all").stdout)
    return {
        j["job_id"]: {
            "JobState": job_state(j["job_state"]), "NodeList": j.get("nodes") or "",
            "Reason": j.get("state_reason", ""), "TresPerNode": tres_per_node(j.get("tres_per_node")),
            "AdminComment": j.get("admin_comment") or "",
            "UserName": j.get("user_name", ""), "SubmitTime": number(j.get("submit_time", 0)),
            "ArrayJobId": number(j.get("array_job_id")) or 0, "ArrayTaskId": number(j.get("array_task_id")),
            "ArrayTasks": j.get("array_task_string") or "",
        }
        for j in doc["jobs"]
    }


def job(cluster, job_id: int) -> dict[str, str]:
    return jobs(cluster)[job_id]


def wait_for(cluster, job_ids, states=ENDED, timeout: float = 120.0) -> dict[int, dict[str, str]]:
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    seen: dict[int, dict[str, str]] = {}
    while pending and time.monotonic() < deadline:
        known = jobs(cluster)
        for job_id in list(pending):
            seen[job_id] = known[job_id]
            if seen[job_id]["JobState"] in states:
                pending.discard(job_id)
        if pending:
            time.sleep(0.5)
    assert not pending, "still waiting: " + ", ".join(
        f"{j}: {seen[j].get('JobState')} {seen[j].get('Reason')} {seen[j].get('AdminComment')}" for j in pending
    )
    return seen


def wait_until(what: str, check, timeout: float = 60.0, every: float = 0.5, seen=None):
    """``check()``'s value once it is truthy; fails naming ``what`` after ``timeout`` seconds, and
    what ``seen()`` then returns (the state the test waited on)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}" + (f"; last seen: {seen()!r}" if seen else "")
        time.sleep(every)
    return found


def output(cluster, job_id: int) -> str:
    return (output_dir(cluster) / f"{job_id}.out").read_text()


def ensure_user(name: str) -> int:
    """A local Unix user for multi-user tests (created once, kept: users are cheap and idempotent)."""
    found = subprocess.run(["id", "-u", name], capture_output=True, text=True)
    if found.returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
        found = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True)
    return int(found.stdout)


def gres_used(cluster) -> dict[tuple[str, str], int]:
    """Slurm's own per-GPU bookkeeping: (node, gres type) -> units in use."""
    text = slurm(cluster, "scontrol", "show", "node", "-d").stdout
    used = {}
    for block in text.split("\n\n"):
        node = re.search(r"NodeName=(\S+)", block)
        gres = re.search(r"GresUsed=(\S+)", block)
        if node and gres:
            for kind, count in re.findall(r"vgpu:(\w+):(\d+)", gres.group(1)):
                used[(node.group(1), kind)] = int(count)
    return used
