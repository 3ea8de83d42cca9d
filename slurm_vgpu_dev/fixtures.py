"""Real Slurm output for the adapter's unit tests, captured from a running dev cluster of one release
(``slurm-vgpu-dev capture-fixtures``), never written by hand.

The same jobs on every release, named for what they show; tests/unit/test_slurm_releases.py parses
each release's capture into the same Jobs and Nodes.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from slurm_vgpu.adapters.slurm import NODE_FIELDS, job_state

from .cluster import Cluster

# name -> sbatch options (the script is given separately); "after" names the job to depend on.
JOBS = {
    "done": ["--gres=vgpu:h100:30", "--vgpu-class=latency", "--vgpu-mem=8G"],
    "running": ["--gres=vgpu:a100:20"],
    "held": ["--gres=vgpu:40", "--hold"],
    "waits-dependency": ["--gres=vgpu:t4:10", "--dependency=afterok:{running}"],
    "plain": [],
    "cancelled": ["--gres=vgpu:10", "--begin=now+1hour"],
}
SCRIPTS = {"running": "sleep 600"}
# The commands whose output the adapter reads, with the environment it sets.
COMMANDS = {
    "squeue.json": (["squeue", "--json", "--all", "--states=all"], {}),
    "sinfo-nodes.txt": (["sinfo", "--noheader", "--Node", f"--Format={NODE_FIELDS}"], {}),
    "sinfo-reason-node3.txt": (["sinfo", "--noheader", "--Node", "--nodes=node3", "--format=%t|%E"], {}),
    "squeue-allocated-node2.txt": (["squeue", "--noheader", "--nodelist=node2",
                                    "--states=RUNNING,CONFIGURING,COMPLETING,SUSPENDED", "--format=%A|%V"],
                                   {"SLURM_TIME_FORMAT": "%s"}),
}


class CaptureError(RuntimeError):
    pass


def capture(cluster: Cluster, out: Path, timeout: float = 180.0) -> list[Path]:
    """Submit the jobs, wait until each shows what it is named for, write every command's output
    (and ``scontrol show job -o`` of each job) under ``out``, then cancel the jobs and resume node3.
    Returns the files written."""
    env = {**os.environ, **cluster.env()}

    def run(*argv: str, extra: dict | None = None) -> str:
        result = subprocess.run(argv, env={**env, **(extra or {})}, capture_output=True, text=True, cwd="/tmp")
        if result.returncode != 0:
            raise CaptureError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    ids: dict[str, int] = {}
    try:
        for name, options in JOBS.items():
            options = [o.format(**ids) for o in options]
            ids[name] = int(run("sbatch", "--parsable", f"--job-name={name}", "-o", "/dev/null", *options,
                                "--wrap", SCRIPTS.get(name, "true")).split(";")[0])
        run("scancel", str(ids["cancelled"]))
        run("scontrol", "update", "NodeName=node3", "State=DRAIN", "Reason=fixture: drained by an admin")
        want = {"done": "COMPLETED", "running": "RUNNING", "held": "PENDING", "waits-dependency": "PENDING",
                "plain": "COMPLETED", "cancelled": "CANCELLED"}
        deadline = time.monotonic() + timeout
        while True:
            jobs = {j["name"]: j for j in json.loads(run("squeue", "--json", "--all", "--states=all"))["jobs"]}
            seen = {name: job_state(jobs[name]["job_state"]) if name in jobs else None for name in want}
            if seen == want:
                break
            if time.monotonic() > deadline:
                raise CaptureError(f"jobs did not settle in {timeout:.0f}s: {seen}")
            time.sleep(1)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for filename, (argv, extra) in COMMANDS.items():
            written.append(_write(out / filename, run(*argv, extra=extra), cluster))
        lines = {name: run("scontrol", "show", "job", "-o", str(job_id)).strip() for name, job_id in ids.items()}
        written.append(_write(out / "scontrol-show-job.json", json.dumps(lines, indent=1) + "\n", cluster))
        written.append(_write(out / "jobs.json", json.dumps(ids, indent=1) + "\n", cluster))
        return written
    finally:
        for job_id in ids.values():
            subprocess.run(["scancel", str(job_id)], env=env, capture_output=True)
        subprocess.run(["scontrol", "update", "NodeName=node3", "State=RESUME"], env=env, capture_output=True)


def _write(path: Path, text: str, cluster: Cluster) -> Path:
    """The capture without what only this machine has: the cluster's directory becomes <DIR>."""
    path.write_text(re.sub(re.escape(str(cluster.dir)), "<DIR>", text))
    return path
