"""Small synthetic traces of the default trace's kind, to check that a policy's gain is not an
artefact of one file: 2-, 4- and 8-GPU nodes of three models and CPU sizes; tasks that are
CPU-only (10%), multi-GPU (4%) or one GPU's share drawn from the default trace's common shares.

Written as trace CSVs, so they go through the same loader as a real trace.
"""
from __future__ import annotations

import random
from pathlib import Path

from .trace import Cluster, load_nodes, load_pods

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
              "deletion_time,scheduled_time\n")
CPUS = (32000, 64000, 96000)
RICH_CPUS = (256000, 384000, 512000)  # CPU never runs out: packing is about GPU shares alone
SHARES = [1000] * 8 + [810, 810, 470, 470, 320, 650, 230, 160, 550]


def pod_row(name, cpu=4000, mem=8192, num=1, milli=500, spec="", qos="LS") -> str:
    return f"{name},{cpu},{mem},{num},{milli},{spec},{qos},Running,0,10,0"


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def synthetic_rows(seed: int, nodes: int = 24, pods: int = 260,
                   node_cpus: tuple[int, ...] = CPUS) -> tuple[list[str], list[str]]:
    """(node rows, task rows) of the trace numbered ``seed``; ``node_cpus`` are the CPU sizes
    nodes are drawn from (the default makes CPU as scarce as GPU, as in the Alibaba trace)."""
    rng = random.Random(seed)
    node_rows = [f"n{i},{rng.choice(node_cpus)},262144,{rng.choice([2, 4, 8])},"
                 f"{rng.choice(['T4', 'G2', 'V100M16'])}" for i in range(nodes)]
    pod_rows = []
    for i in range(pods):
        kind = rng.random()
        if kind < 0.1:
            pod_rows.append(pod_row(f"p{i}", cpu=rng.choice([4000, 12000]), num=0, milli=0))
        elif kind < 0.14:
            pod_rows.append(pod_row(f"p{i}", cpu=16000, num=rng.choice([2, 4]), milli=1000))
        else:
            pod_rows.append(pod_row(f"p{i}", cpu=rng.choice([2000, 4000, 8000, 12000]),
                                    milli=rng.choice(SHARES), qos=rng.choice(["LS", "BE"])))
    return node_rows, pod_rows


def synthetic_trace(folder: Path, seed: int, nodes: int = 24, pods: int = 260,
                    node_cpus: tuple[int, ...] = CPUS) -> tuple[Cluster, list]:
    """Write trace ``seed`` into ``folder`` and load it: (cluster, tasks)."""
    node_rows, pod_rows = synthetic_rows(seed, nodes, pods, node_cpus)
    return (load_nodes(_write(folder / f"n{seed}.csv", NODE_HEADER, node_rows)),
            load_pods(_write(folder / f"p{seed}.csv", POD_HEADER, pod_rows)))
