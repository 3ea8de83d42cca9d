"""Looking at the node side of a dev cluster: slice files, placements, the fake MPS daemons' state."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from slurm_vgpu.config import load
from slurm_vgpu.node.store import connect


def node_config(cluster):
    return load(cluster.vgpu_conf)


def placement(cluster, job_id: int) -> dict:
    """The job's latest placement row joined with its GPU."""
    with connect(cluster.database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute(
            "SELECT p.*, g.index AS gpu_index, g.minor AS gpu_minor, g.node, g.gres_type FROM placements p "
            "JOIN gpus g ON g.uuid = p.gpu_uuid "
            "WHERE p.job_id = %s ORDER BY p.id DESC LIMIT 1", (job_id,),
        ).fetchone()


def wait_started(cluster, job_ids, timeout: float = 60.0) -> None:
    """Until the prolog has written every job's slice file, its last step (MPS caps set by then).
    Neither Slurm's RUNNING nor the placement's 'running' says that the prolog is done."""
    slice_dir = node_config(cluster).slice_dir
    deadline = time.monotonic() + timeout
    while not all((slice_dir / str(j)).exists() for j in job_ids):
        assert time.monotonic() < deadline, f"prolog did not start jobs {job_ids}"
        time.sleep(0.2)


def node_gpus(cluster, node: str) -> list[dict]:
    with connect(cluster.database_url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute('SELECT uuid, "index", minor FROM gpus WHERE node = %s ORDER BY "index"', (node,)).fetchall()


def mps_state(cluster, gpu_uuid: str) -> dict:
    """What the fake control daemon of that GPU was told (fake-mps-state.json in its pipe dir)."""
    path = node_config(cluster).gpu_dir(gpu_uuid) / "pipe" / "fake-mps-state.json"
    return json.loads(path.read_text())


def output_option(cluster) -> str:
    """Job output under the cluster's own directory: job ids restart at 1 in every test cluster, so
    a shared /tmp name would collide with other clusters' files."""
    directory = Path(cluster.dir) / "out"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o1777)
    return f"--output={directory}/%j.out"


def job_output(cluster, job_id: int) -> str:
    return (Path(cluster.dir) / "out" / f"{job_id}.out").read_text()


def device_probe(cluster) -> str:
    """A shell loop that opens each simulated GPU device file and prints ``<path>=<verdict>``:
    ``denied`` (EPERM: the device cgroup fences it), ``allowed`` (the fence let it through; a
    device node without a driver then fails with ENXIO) or ``open``."""
    return (f"for f in {cluster.device_dir}/nvidia*; do if (exec 3<$f) 2>/dev/null; then echo $f=open; "
            "else (exec 3<$f) 2>&1 | grep -q 'not permitted' && echo $f=denied || echo $f=allowed; fi; done")


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
