"""What the agent sees on its node in one look: the GPUs (NVML or simulated), the slices Postgres
placed on them, and the GPU processes with the job each belongs to. Every decision the agent makes
(quotas, the SLO guard, metrics) is a pure function of one such view.

The view imports without SQLAlchemy (the GPU validation kit, ``tests/gpu/run``, builds views where
only the GPU stack is installed); the two Postgres reads import it when they run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..adapters.gpus import GpuInventory, GpuRecord
from ..contract import ACTIVE_STATES
from ..policy import SloClass
from . import procs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Slice:
    """An active placement on one of this node's GPUs."""

    job_id: int
    gpu_uuid: str
    uid: int
    share: int  # % of the GPU's SMs
    memory_mib: int | None
    slo_class: SloClass
    state: str  # placed | pinned | running
    whole: bool = False  # a whole GPU, given natively: no MPS server to run or restart for it


@dataclass(frozen=True)
class Process:
    pid: int
    gpu_uuid: str
    job_id: int | None  # None: not in any Slurm job of this node
    used_mib: int
    sm_util: float | None  # 0..1 of the GPU


@dataclass(frozen=True)
class GpuView:
    record: GpuRecord
    state: str  # up | draining | down, as Postgres has it
    utilization: float | None  # 0..1
    mps_daemon: bool  # its MPS control daemon runs


@dataclass(frozen=True)
class NodeView:
    node: str
    gpus: tuple[GpuView, ...]
    slices: tuple[Slice, ...]
    processes: tuple[Process, ...]

    def gpu(self, uuid: str) -> GpuView | None:
        return next((g for g in self.gpus if g.record.uuid == uuid), None)

    def processes_of(self, job_id: int) -> list[Process]:
        return [p for p in self.processes if p.job_id == job_id]


def node_slices(session: Session, node: str) -> list[Slice]:
    import sqlalchemy as sa

    from ..db.models import Gpu, Placement

    rows = session.execute(
        sa.select(Placement).join(Gpu, Gpu.uuid == Placement.gpu_uuid)
        .where(Gpu.node == node, Placement.state.in_(ACTIVE_STATES)).order_by(Placement.job_id)
    ).scalars()
    return [Slice(p.job_id, p.gpu_uuid, p.uid, p.share, p.memory_mib, SloClass(p.slo_class), p.state, p.whole)
            for p in rows]


def gpu_states(session: Session, node: str) -> dict[str, str]:
    import sqlalchemy as sa

    from ..db.models import Gpu

    return dict(session.execute(sa.select(Gpu.uuid, Gpu.state).where(Gpu.node == node)).all())


def look(node: str, inventory: GpuInventory, gpus: list[GpuRecord], states: dict[str, str],
         slices: list[Slice], daemon_up: dict[str, bool], job_of_sluid: procs.JobOfSluid) -> NodeView:
    """Sample every present GPU's processes and utilisation and map each process to its job."""
    processes = tuple(
        Process(p.pid, g.uuid, procs.job_of(p.pid, node, job_of_sluid), p.used_mib, p.sm_util)
        for g in gpus for p in inventory.processes(g.uuid)
    )
    views = tuple(
        GpuView(g, states.get(g.uuid, "up"), inventory.utilization(g.uuid), daemon_up.get(g.uuid, False))
        for g in gpus
    )
    return NodeView(node, views, tuple(slices), processes)
