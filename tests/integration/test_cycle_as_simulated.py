"""One policy in production and in simulation: a placement cycle against a real Postgres (Slurm a
stand-in answering fixed jobs and nodes) decides as the simulator's replay of the same requests on
the same cluster, CPUs and memory of the nodes included."""
from __future__ import annotations

import gc
import time

import sqlalchemy as sa

from slurm_vgpu.adapters.slurm import Job, Node as SlurmNode
from slurm_vgpu.config import Config
from slurm_vgpu.contract import parse_request
from slurm_vgpu.db import store
from slurm_vgpu.db.engine import session_scope
from slurm_vgpu.db.models import Gpu, Node
from slurm_vgpu.placement.cycle import policy_config, run_cycle
from slurm_vgpu.policy import NodeState, Request
from slurm_vgpu.sim.replay import Replay
from slurm_vgpu.sim.trace import Cluster

from .test_cycle_restart import RecordingSlurm

# node -> CPUs idle, as sinfo shows them; two A100s each
CPUS_IDLE = {"n1": 4, "n2": 16, "n3": 32, "n4": 8}
# (share %, CPUs), in priority order
ASKS = [(30, 2), (50, 8), (70, 4), (20, 1), (40, 12), (60, 2), (10, 6), (90, 3), (30, 10), (50, 1)]


class SlurmWithNodes(RecordingSlurm):
    def nodes(self):
        return {name: SlurmNode("mix", frozenset({"debug"}), cpus_idle=cpus, memory_free_mib=256000)
                for name, cpus in CPUS_IDLE.items()}


def inventory(engine) -> None:
    with session_scope(engine) as s:
        for n, name in enumerate(CPUS_IDLE):
            s.add(Node(name=name, heartbeat_at=sa.func.now()))
            s.flush()
            for index in range(2):
                s.add(Gpu(uuid=f"GPU-{name}-{index}", node=name, index=index, name="NVIDIA A100", model="a100",
                          gres_type=f"a100_{index}", sm_count=108, memory_mib=40960, compute_capability="8.0"))


def waiting(job_id: int, share: int, cpus: int, now: float) -> Job:
    return Job(job_id=job_id, user_id=1000, user_name="u", state="PENDING", priority=1000 - job_id,
               submit_time=int(now) - 5, nodes="", tres_per_node="", partition="debug", cpus=cpus,
               request=parse_request(f"vgpu-state=unplaced share={share} class=throughput"))


def simulated(gpus, nodes, requests) -> dict[str, int]:
    """Units in use on each GPU once the simulator's replay has placed ``requests`` in order."""
    cluster = Cluster(tuple(gpus), tuple(nodes))
    replay = Replay(cluster, range(len(CPUS_IDLE)), policy_config(Config()), [(r, 1.0) for r in requests])
    for req in requests:
        replay.place(req)
    return {g.uuid: g.used for view in replay.state.views for g in view.gpus if g.used}


def test_a_cycle_places_as_the_simulator_does_on_the_same_cluster(clean_db):
    inventory(clean_db)
    with session_scope(clean_db) as s:
        gpus = store.gpu_states(s, Config().heartbeat_timeout)  # as the cycle reads them
    now = time.time()
    jobs = [waiting(job_id, share, cpus, now) for job_id, (share, cpus) in enumerate(ASKS, start=1)]
    try:
        run_cycle(clean_db, SlurmWithNodes(jobs), Config())
    finally:
        gc.unfreeze()  # a placer build freezes the process's objects, as it does in the daemon
    with clean_db.connect() as conn:
        placed = dict(conn.execute(sa.text("SELECT gpu_uuid, sum(share) FROM placements GROUP BY gpu_uuid")).all())
    requests = [Request(str(job_id), share, user=1000, cpu_milli=1000 * cpus)
                for job_id, (share, cpus) in enumerate(ASKS, start=1)]
    nodes = [NodeState(name, 1000 * cpus, 256000) for name, cpus in CPUS_IDLE.items()]
    assert placed == simulated(gpus, nodes, requests)
    # the nodes' CPUs decide here: blind to them, the simulator would place otherwise
    assert placed != simulated(gpus, [], requests)
