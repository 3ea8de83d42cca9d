"""Registers the node's GPUs in Postgres when the agent starts; the agent's rounds then heartbeat."""
from __future__ import annotations

import logging

import sqlalchemy as sa

from .. import __version__
from ..adapters.gpus import GpuInventory
from ..db import store
from ..db.engine import session_scope

log = logging.getLogger("slurm_vgpu.agent")


def register(engine: sa.Engine, node: str, inventory: GpuInventory, mps_max_clients: int | None = None) -> int:
    """Read the GPUs (NVML or the simulated file) and record them, each with its client limit (the
    site's ``MpsMaxClients`` where lower than its MPS server's); returns how many."""
    gpus = inventory.gpus()
    with session_scope(engine) as session:
        store.register_node(session, node, gpus, __version__, mps_max_clients)
        store.log_event(session, "agent-registered", f"{node}: {len(gpus)} GPUs", node=node)
    log.info("registered %s with %d GPUs", node, len(gpus))
    return len(gpus)
