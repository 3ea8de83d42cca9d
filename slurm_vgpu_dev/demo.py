"""The README's demo: submit a few vgpu jobs to the dev cluster and show where each one ran."""
from __future__ import annotations

import os
import subprocess
import time

from rich.console import Console
from rich.table import Table

from slurm_vgpu.adapters.slurm import Slurm
from slurm_vgpu.placement.cycle import ENDED
from .cluster import Cluster

DEMO_JOBS = [
    ["--gres=vgpu:30", "--vgpu-class=latency", "--vgpu-mem=8G"],
    ["--gres=vgpu:h100:50"],
    ["--gres=vgpu:60"],
    ["--gres=vgpu:60"],
    ["--gres=vgpu:t4:100", "--vgpu-class=throughput"],
    ["--gres=vgpu:a100:25", "--vgpu-class=best-effort"],
]
BAD_JOBS = [["--gres=vgpu:150"], ["--gres=vgpu:h200:30"]]
SCRIPT = 'echo "$(hostname) GPU=$CUDA_VISIBLE_DEVICES SMs=${CUDA_MPS_ACTIVE_THREAD_PERCENTAGE:-?}%"; sleep 3'


def run_demo(cluster: Cluster, console: Console, timeout: float = 120.0) -> bool:
    """Returns True when every demo job completed."""
    env = {**os.environ, **cluster.env()}
    out_dir = cluster.dir / "demo"
    out_dir.mkdir(exist_ok=True)
    submitted = {}
    for options in DEMO_JOBS:
        result = subprocess.run(
            ["sbatch", "--parsable", "-o", f"{out_dir}/%j.out", *options, "--wrap", SCRIPT],
            env=env, capture_output=True, text=True, cwd=out_dir,
        )
        if result.returncode != 0:
            console.print(f"[red]sbatch {' '.join(options)} failed:[/] {result.stderr.strip()}")
            return False
        submitted[int(result.stdout.split(";")[0])] = " ".join(options)
        console.print(f"sbatch {' '.join(options):48} -> job {result.stdout.strip()}")
    for options in BAD_JOBS:
        result = subprocess.run(["sbatch", *options, "--wrap", "true"], env=env, capture_output=True, text=True)
        first = next((line for line in result.stderr.splitlines() if "slurm-vgpu" in line), result.stderr.strip())
        console.print(f"sbatch {' '.join(options):48} -> refused: {first.removeprefix('sbatch: error: ')}")

    slurm = Slurm(cluster.slurm_conf)
    deadline = time.monotonic() + timeout
    with console.status("waiting for the jobs to finish"):
        while time.monotonic() < deadline:
            jobs = {j.job_id: j for j in slurm.jobs() if j.job_id in submitted}
            if len(jobs) == len(submitted) and all(j.state in ENDED for j in jobs.values()):
                break
            time.sleep(1)
    table = Table(title="Where each vgpu job ran")
    for column in ("job", "request", "state", "node", "GPU (Slurm GRES)", "the job saw"):
        table.add_column(column)
    for job_id, options in submitted.items():
        job = jobs.get(job_id)
        out = out_dir / f"{job_id}.out"
        table.add_row(
            str(job_id), options, job.state if job else "?", job.nodes if job else "",
            job.tres_per_node.removeprefix("gres:").removeprefix("gres/") if job else "", out.read_text().strip() if out.exists() else "",
        )
    console.print(table)
    completed = sum(j.state == "COMPLETED" for j in jobs.values())
    console.print(f"{completed} of {len(submitted)} vgpu jobs completed. The cluster stays up: "
                  f'eval "$(slurm-vgpu-dev env --dir {cluster.dir})" to use it, slurm-vgpu-dev down to stop it.')
    return completed == len(submitted)

