"""Registers the node's GPUs in Postgres when the agent starts; the agent's rounds then heartbeat."""
from __future__ import annotations

import logging
from collections.abc import Mapping

import sqlalchemy as sa

from .. import __version__
from ..adapters.gpus import GpuInventory
from ..catalog import UNKNOWN_SPEED, measured_speeds, speed_of
from ..db import store
from ..db.profiles import full_gpu_throughputs
from ..db.engine import session_scope

log = logging.getLogger("slurm_vgpu.agent")


def register(engine: sa.Engine, node: str, inventory: GpuInventory, mps_max_clients: int | None = None,
             speeds: Mapping[str, float] = {}, speed_workload: str | None = None) -> int:
    """Read the GPUs (NVML or the simulated file) and record them, each with its client limit (the
    site's ``MpsMaxClients`` where lower than its MPS server's) and its speed (measured by the
    site's ``SpeedWorkload`` profile, else the site's ``GpuSpeed``, else the datasheet's); returns
    how many. A model of no known speed is said aloud: it counts as an A100, which may be far from
    the truth."""
    gpus = inventory.gpus()
    with session_scope(engine) as session:
        measured = measured_speeds(full_gpu_throughputs(session, speed_workload), speeds) if speed_workload else {}
        unmeasured = sorted({g.model for g in gpus} - set(measured)) if speed_workload else []
        if unmeasured:
            why = (f"SpeedWorkload {speed_workload} has no profile at a share of 100 on {', '.join(unmeasured)} "
                   f"(or none anchored on a model of known speed); measure it with slurm-vgpu profile "
                   f"{speed_workload} --model MODEL -- COMMAND")
            log.warning("%s: %s", node, why)
            store.log_event(session, "gpu-speed-unmeasured", why, node=node)
        store.register_node(session, node, gpus, __version__, mps_max_clients, speeds, measured)
        store.log_event(session, "agent-registered", f"{node}: {len(gpus)} GPUs", node=node)
        for model in sorted({g.model for g in gpus if speed_of(g.model, speeds, measured)[1] == "unknown"}):
            why = unknown_speed(model)
            log.warning("%s: %s", node, why)
            store.log_event(session, "gpu-speed-unknown", why, node=node)
    log.info("registered %s with %d GPUs", node, len(gpus))
    return len(gpus)


def unknown_speed(model: str) -> str:
    return (f"GPU model {model} has no speed in GpuSpeed or the datasheet table, so it counts as an A100 "
            f"(speed {UNKNOWN_SPEED:g}); add GpuSpeed={model}:<its throughput relative to an A100> to slurm-vgpu.conf")
