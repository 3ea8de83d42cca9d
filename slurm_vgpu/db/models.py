"""The schema. Capacity, MPS clients and one-user-per-GPU are enforced by the database itself (the
capacity guard, stated whole in migration 0007), so no caller, however buggy or concurrent, can
commit an oversubscribed GPU."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..catalog import MPS_CLIENTS_BEFORE_VOLTA, mps_clients
from ..contract import ACTIVE_STATES, PLACEMENT_STATES, SLO_CLASSES

GPU_STATES = ("up", "draining", "down")


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Node(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    registered_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    agent_version: Mapped[str | None] = mapped_column(sa.Text)

    gpus: Mapped[list[Gpu]] = relationship(back_populates="node_row", order_by="Gpu.index")


class Gpu(Base):
    __tablename__ = "gpus"
    __table_args__ = (
        sa.UniqueConstraint("node", "index", name="node_index"),
        sa.CheckConstraint("state IN ('up', 'draining', 'down')", name="state"),
        sa.CheckConstraint("speed > 0", name="speed"),
        sa.CheckConstraint("max_clients > 0", name="max_clients"),
    )

    uuid: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    node: Mapped[str] = mapped_column(sa.ForeignKey("nodes.name", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(sa.SmallInteger)
    # /dev/nvidia<minor>: the driver's minor number, which NVML does not promise equals the index
    minor: Mapped[int] = mapped_column(sa.SmallInteger, default=lambda ctx: ctx.get_current_parameters()["index"])
    name: Mapped[str] = mapped_column(sa.Text)
    model: Mapped[str] = mapped_column(sa.Text)
    gres_type: Mapped[str] = mapped_column(sa.Text)
    sm_count: Mapped[int] = mapped_column(sa.Integer)
    memory_mib: Mapped[int] = mapped_column(sa.Integer)
    compute_capability: Mapped[str] = mapped_column(sa.Text)
    speed: Mapped[float] = mapped_column(sa.Float, server_default="1.0")
    state: Mapped[str] = mapped_column(sa.Text, server_default="up")
    state_reason: Mapped[str | None] = mapped_column(sa.Text)
    multi_user: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    # the most active slices it holds: its MPS server's client limit, or the site's lower one. Written
    # by the agent at registration (migration 0007 fills existing GPUs); an agent older than the
    # column registers new GPUs at the server default, the least any MPS server takes.
    max_clients: Mapped[int] = mapped_column(
        sa.SmallInteger, server_default=str(MPS_CLIENTS_BEFORE_VOLTA),
        default=lambda ctx: mps_clients(ctx.get_current_parameters()["compute_capability"]))

    node_row: Mapped[Node] = relationship(back_populates="gpus")


class Placement(Base):
    __tablename__ = "placements"
    __table_args__ = (
        sa.CheckConstraint("share BETWEEN 1 AND 100", name="share"),
        sa.CheckConstraint("memory_mib IS NULL OR memory_mib > 0", name="memory"),
        sa.CheckConstraint("NOT whole OR (share = 100 AND memory_mib IS NULL)", name="whole"),
        sa.CheckConstraint("cpus >= 1", name="cpus"),
        sa.CheckConstraint("gpus >= 1", name="gpus"),
        sa.CheckConstraint("node_memory_mib IS NULL OR node_memory_mib > 0", name="node_memory"),
        sa.CheckConstraint(f"state IN {PLACEMENT_STATES}", name="state"),
        sa.CheckConstraint(f"slo_class IN {SLO_CLASSES}", name="slo_class"),
        # a slice job holds one active placement; a job of N whole GPUs one per GPU
        sa.Index(
            "uq_placements_active_slice", "job_id", unique=True,
            postgresql_where=sa.text(f"state IN {ACTIVE_STATES} AND NOT whole"),
        ),
        sa.Index(
            "uq_placements_active_job_gpu", "job_id", "gpu_uuid", unique=True,
            postgresql_where=sa.text(f"state IN {ACTIVE_STATES}"),
        ),
        sa.Index("ix_placements_active_gpu", "gpu_uuid", postgresql_where=sa.text(f"state IN {ACTIVE_STATES}")),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.BigInteger)
    # with job_id, names the job: a slurmctld that lost its state gives out job ids again
    job_submit_time: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    gpu_uuid: Mapped[str] = mapped_column(sa.ForeignKey("gpus.uuid"))
    uid: Mapped[int] = mapped_column(sa.Integer)
    share: Mapped[int] = mapped_column(sa.SmallInteger)  # vgpu units (% of SMs) on this GPU
    requested_share: Mapped[int] = mapped_column(sa.SmallInteger)  # what the user asked (reference units)
    memory_mib: Mapped[int | None] = mapped_column(sa.Integer)
    # a whole GPU (--gres=gpu:1), given natively by Slurm's gres/gpu: all 100 units, no MPS, no memory cap
    whole: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    gpus: Mapped[int] = mapped_column(sa.SmallInteger, server_default="1")  # the whole GPUs its job holds (1: a slice)
    # what the job asked of its node beside the GPU (-n x -c; --mem, None: not asked for): the
    # typical requests the placer measures CPU stranding against
    cpus: Mapped[int] = mapped_column(sa.Integer, server_default="1")
    node_memory_mib: Mapped[int | None] = mapped_column(sa.Integer)
    slo_class: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.Text, server_default="placed")
    reason: Mapped[str | None] = mapped_column(sa.Text)
    # Interval ends come from the server's clock at the moment of the write (not now(), which is the
    # transaction's start), so a slice placed after another ended never appears to overlap it.
    placed_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp())
    pinned_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    gpu: Mapped[Gpu] = relationship()


class Event(Base):
    """Append-only log: what the placement, agents and prologs did, and why."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now(), index=True)
    kind: Mapped[str] = mapped_column(sa.Text)
    job_id: Mapped[int | None] = mapped_column(sa.BigInteger, index=True)
    gpu_uuid: Mapped[str | None] = mapped_column(sa.Text)
    node: Mapped[str | None] = mapped_column(sa.Text)
    message: Mapped[str] = mapped_column(sa.Text)
    details: Mapped[dict | None] = mapped_column(JSONB)


class NodeLogin(Base):
    """Which node a database login of a GPU node acts for (``*``: every node); the row-level
    policies of migration 0006 let it write that node's rows only."""

    __tablename__ = "node_logins"

    login: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    node: Mapped[str] = mapped_column(sa.Text)


class Profile(Base):
    """One measured point of a workload's curve (slurm_vgpu.profiles): its figures on one GPU model
    at one SM share and batch size, from the Slurm job that measured them."""

    __tablename__ = "profiles"
    __table_args__ = (
        sa.UniqueConstraint("name", "model", "share", "batch", name="point"),
        sa.CheckConstraint("share BETWEEN 1 AND 100", name="share"),
        sa.CheckConstraint("batch >= 1", name="batch"),
        sa.CheckConstraint("throughput >= 0", name="throughput"),
        sa.CheckConstraint("p50_ms > 0 AND p99_ms >= p50_ms", name="latency"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)  # the workload
    model: Mapped[str] = mapped_column(sa.Text)  # GPU model short name, as gpus.model
    share: Mapped[int] = mapped_column(sa.SmallInteger)
    batch: Mapped[int] = mapped_column(sa.Integer, server_default="1")
    throughput: Mapped[float] = mapped_column(sa.Float)  # per second
    p50_ms: Mapped[float] = mapped_column(sa.Float)
    p99_ms: Mapped[float] = mapped_column(sa.Float)
    job_id: Mapped[int | None] = mapped_column(sa.BigInteger)  # the Slurm job that measured it
    measured_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
