"""The queries every component shares: inventory, capacity as the policy sees it, placements, events."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..adapters.gpus import GpuRecord
from ..catalog import mps_clients, speed_of
from ..policy.model import GpuState, Request, SloClass
from .models import ACTIVE_STATES, Event, Gpu, Node, Placement

PIN_REFUSED = "Slurm refused the pin"  # how a placement ended by a refused pin begins its reason


def now() -> datetime:
    return datetime.now(timezone.utc)


def register_node(session: Session, node: str, gpus: Sequence[GpuRecord], agent_version: str,
                  mps_max_clients: int | None = None, speeds: Mapping[str, float] = {},
                  measured: Mapping[str, float] = {}) -> None:
    """Insert or refresh a node and its GPUs; GPUs that vanished from the node are marked down. Each
    GPU's client limit is its MPS server's, or ``mps_max_clients`` (the site's) where lower; its
    speed the measured one (``measured``, from SpeedWorkload's profile), else the site's
    (``speeds``, from GpuSpeed), else the datasheet's."""
    session.execute(
        sa.dialects.postgresql.insert(Node)
        .values(name=node, heartbeat_at=now(), agent_version=agent_version)
        .on_conflict_do_update(index_elements=[Node.name], set_={"heartbeat_at": now(), "agent_version": agent_version})
    )
    for gpu in gpus:
        values = dict(
            node=node, index=gpu.index, minor=gpu.minor, name=gpu.name, model=gpu.model, gres_type=gpu.gres_type,
            sm_count=gpu.sm_count, memory_mib=gpu.memory_mib,
            compute_capability=gpu.compute_capability, speed=speed_of(gpu.model, speeds, measured)[0],
            max_clients=mps_clients(gpu.compute_capability, mps_max_clients),
        )
        session.execute(
            sa.dialects.postgresql.insert(Gpu)
            .values(uuid=gpu.uuid, **values)
            .on_conflict_do_update(index_elements=[Gpu.uuid], set_=values)
        )
    present = [g.uuid for g in gpus]
    session.execute(
        sa.update(Gpu)
        .where(Gpu.node == node, Gpu.uuid.not_in(present), Gpu.state != "down")
        .values(state="down", state_reason="no longer reported by the node's agent")
    )


def heartbeat(session: Session, node: str) -> None:
    session.execute(sa.update(Node).where(Node.name == node).values(heartbeat_at=now()))


def gpu_states(session: Session, heartbeat_timeout: float) -> list[GpuState]:
    """Every GPU with what is placed on it, as the pure policy takes it.

    A GPU is unavailable when it is not ``up`` or its node's agent has been silent too long. Read
    as plain rows, not ORM objects: the daemon reads every GPU each cycle, and at 8,000 GPUs the
    ORM's identity map took most of the read (docs/architecture.md, "Placement at scale").
    """
    fresh_after = now() - timedelta(seconds=heartbeat_timeout)
    placed: dict[str, list[tuple[int, int | None, int, str]]] = defaultdict(list)  # (share, memory, uid, class)
    for gpu_uuid, share, memory, uid, slo_class in session.execute(
        sa.select(Placement.gpu_uuid, Placement.share, Placement.memory_mib, Placement.uid, Placement.slo_class)
        .where(Placement.state.in_(ACTIVE_STATES)).order_by(Placement.id)
    ):
        placed[gpu_uuid].append((share, memory, uid, slo_class))
    rows = session.execute(
        sa.select(Gpu.uuid, Gpu.node, Gpu.index, Gpu.model, Gpu.memory_mib, Gpu.speed, Gpu.multi_user,
                  Gpu.max_clients, Gpu.state, Gpu.state_reason, Node.heartbeat_at)
        .join(Node, Node.name == Gpu.node).order_by(Gpu.node, Gpu.index)
    )
    states = []
    for uuid, node, index, model, memory_mib, speed, multi_user, max_clients, state, reason, heartbeat_at in rows:
        slices = placed.get(uuid, ())
        silent = heartbeat_at is None or heartbeat_at < fresh_after
        why = (f"{node} GPU {index} is {state}: {reason or 'no reason given'}" if state != "up" else
               f"node {node}'s agent is silent (no heartbeat within {heartbeat_timeout:g}s)" if silent else None)
        states.append(
            GpuState(
                uuid=uuid,
                node=node,
                index=index,
                model=model,
                memory_mib=memory_mib,
                speed=speed,
                used=sum(share for share, _, _, _ in slices),
                memory_used_mib=sum(memory for _, memory, _, _ in slices if memory is not None),
                user=slices[0][2] if slices and not multi_user else None,
                classes=tuple(SloClass(cls) for _, _, _, cls in slices),
                capped_users=frozenset(uid for _, memory, uid, _ in slices if memory is not None),
                uncapped_users=frozenset(uid for _, memory, uid, _ in slices if memory is None),
                max_clients=max_clients,
                available=why is None,
                unavailable_reason=why,
            )
        )
    return states


def recent_requests(session: Session, limit: int) -> list[Request]:
    """What the jobs of the last ``limit`` placements asked for, newest first: the workload the
    placement measures fragmentation and CPU stranding against. A job of several whole GPUs is one
    request of that many (each of its placements, one per GPU, says how many), also when it was
    placed more than once; the model a job asked for is not kept, so none is given."""
    rows = session.execute(
        sa.select(Placement.job_id, Placement.job_submit_time, Placement.requested_share, Placement.uid,
                  Placement.slo_class, Placement.memory_mib, Placement.whole, Placement.gpus, Placement.cpus,
                  Placement.node_memory_mib).order_by(Placement.id.desc()).limit(limit)
    ).all()
    jobs: dict[tuple[int, int], sa.Row] = {}
    for row in rows:
        jobs.setdefault((row.job_id, row.job_submit_time), row)
    return [Request(job_id=str(job_id), share=r.requested_share, user=r.uid, slo_class=SloClass(r.slo_class),
                    memory_mib=r.memory_mib, gpus=r.gpus if r.whole else 1, whole=r.whole,
                    cpu_milli=1000 * r.cpus, node_memory_mib=r.node_memory_mib or 0)
            for (job_id, _), r in jobs.items()]


def pinned_nodes(session: Session) -> list[tuple[int, str]]:
    """(job id, node) of each job placed or pinned and not yet started: Slurm counts its CPUs and
    memory on that node only once it starts."""
    return [tuple(r) for r in session.execute(
        sa.select(Placement.job_id, Gpu.node).distinct().join(Gpu, Gpu.uuid == Placement.gpu_uuid)
        .where(Placement.state.in_(("placed", "pinned"))))]


def active_placements(session: Session) -> list[Placement]:
    return list(session.scalars(sa.select(Placement).where(Placement.state.in_(ACTIVE_STATES))))


def refused_nodes(session: Session, submit_times: dict[int, int], since: datetime) -> dict[int, set[str]]:
    """Job id -> the nodes that refused its pin since ``since`` (placements that ended ``failed``
    because Slurm refused the pin), for the jobs of ``submit_times`` (job id -> submit time)."""
    if not submit_times:
        return {}
    refused: dict[int, set[str]] = defaultdict(set)
    for job_id, submitted, node in session.execute(
        sa.select(Placement.job_id, Placement.job_submit_time, Gpu.node).join(Gpu, Gpu.uuid == Placement.gpu_uuid)
        .where(Placement.state == "failed", Placement.reason.startswith(PIN_REFUSED),
               Placement.job_id.in_(list(submit_times)), Placement.ended_at >= since)
    ):
        if submitted in (0, submit_times[job_id]):
            refused[job_id].add(node)
    return dict(refused)


def node_of_gpu(session: Session, uuid: str) -> str | None:
    return session.scalar(sa.select(Gpu.node).where(Gpu.uuid == uuid))


def gpu_by_type(session: Session, node: str, gres_type: str) -> Gpu | None:
    return session.scalar(sa.select(Gpu).where(Gpu.node == node, Gpu.gres_type == gres_type))


def insert_placements(session: Session, rows: Sequence[dict]) -> bool:
    """Write one job's placements under the capacity guard, all or none; False (nothing written)
    when it refuses one."""
    try:
        with session.begin_nested():
            session.add_all([Placement(**row) for row in rows])
            session.flush()
    except sa.exc.IntegrityError:
        return False
    return True


def gpus_by_uuid(session: Session, uuids: Iterable[str]) -> dict[str, Gpu]:
    return {g.uuid: g for g in session.scalars(sa.select(Gpu).where(Gpu.uuid.in_(list(uuids))))}


def end_placement(session: Session, placement: Placement, state: str, reason: str) -> None:
    placement.state = state
    placement.reason = reason
    placement.ended_at = sa.func.clock_timestamp()
    log_event(session, f"placement-{state}", reason, job_id=placement.job_id, gpu_uuid=placement.gpu_uuid)


def log_event(session: Session, kind: str, message: str, *, job_id: int | None = None,
              gpu_uuid: str | None = None, node: str | None = None, details: dict | None = None) -> None:
    session.add(Event(kind=kind, message=message, job_id=job_id, gpu_uuid=gpu_uuid, node=node, details=details))
