"""The cluster as Postgres records it, as plain dicts: what ``gpus``, ``nodes``, ``placements``,
``explain`` and ``drain`` print and reason about.

A GPU's use is the sum of its active placements (placed, pinned, running): the same sum the capacity
guard enforces. Ages are computed by the database's clock, so a CLI host with a skewed clock still
reads heartbeats right.
"""
from __future__ import annotations

import pwd
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..db.models import ACTIVE_STATES, Gpu, Node, NodeLogin, Placement


def user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _age(column):
    return sa.func.extract("epoch", sa.func.now() - column)


def _active_use():
    return (
        sa.select(
            Placement.gpu_uuid,
            sa.func.sum(Placement.share).label("share"),
            sa.func.sum(Placement.memory_mib).label("memory"),
            sa.func.count().label("slices"),
            sa.func.array_agg(sa.distinct(Placement.uid)).label("uids"),
            sa.func.array_agg(Placement.slo_class).label("classes"),
        )
        .where(Placement.state.in_(ACTIVE_STATES))
        .group_by(Placement.gpu_uuid)
        .subquery()
    )


def gpu_records(session: Session, heartbeat_timeout: float, nodes: Sequence[str] | None = None) -> list[dict]:
    """Every GPU (of ``nodes`` when given) with its use, MPS users, state and whether it can take slices."""
    use = _active_use()
    query = (
        sa.select(Gpu, _age(Node.heartbeat_at).label("heartbeat_age"), use.c.share, use.c.memory,
                  use.c.slices, use.c.uids, use.c.classes)
        .join(Node, Node.name == Gpu.node)
        .outerjoin(use, use.c.gpu_uuid == Gpu.uuid)
        .order_by(Gpu.node, Gpu.index)
    )
    if nodes is not None:
        query = query.where(Gpu.node.in_(nodes))
    records = []
    for gpu, heartbeat_age, share, memory, slices, uids, classes in session.execute(query):
        share, memory = int(share or 0), int(memory or 0)
        heartbeat_age = None if heartbeat_age is None else float(heartbeat_age)
        records.append({
            "uuid": gpu.uuid,
            "node": gpu.node,
            "index": gpu.index,
            "gres_type": gpu.gres_type,
            "name": gpu.name,
            "model": gpu.model,
            "sm_count": gpu.sm_count,
            "memory_mib": gpu.memory_mib,
            "compute_capability": gpu.compute_capability,
            "speed": gpu.speed,
            "multi_user": gpu.multi_user,
            "state": gpu.state,
            "state_reason": gpu.state_reason,
            "share_used": share,
            "share_free": 100 - share,
            "memory_placed_mib": memory,
            "slices": int(slices or 0),
            "max_clients": gpu.max_clients,
            "slo_classes": sorted(classes or []),
            "mps_users": [{"uid": uid, "name": user_name(uid)} for uid in sorted(uids or [])],
            "node_heartbeat_age_s": heartbeat_age,
            "unavailable_reason": _unavailable(gpu, heartbeat_age, heartbeat_timeout),
        })
    return records


def _unavailable(gpu: Gpu, heartbeat_age: float | None, heartbeat_timeout: float) -> str | None:
    """Why the placement will not put a new slice here, or None when it may."""
    if gpu.state != "up":
        return f"{gpu.state}: {gpu.state_reason or 'no reason given'}"
    if heartbeat_age is None:
        return f"node {gpu.node}'s agent never sent a heartbeat"
    if heartbeat_age > heartbeat_timeout:
        return f"node {gpu.node}'s agent silent for {heartbeat_age:.0f}s (timeout {heartbeat_timeout:.0f}s)"
    return None


def node_records(session: Session, heartbeat_timeout: float, nodes: Sequence[str] | None = None) -> list[dict]:
    """Every node (of ``nodes`` when given) with its agent's heartbeat and its GPUs summed up."""
    query = sa.select(Node, _age(Node.heartbeat_at).label("heartbeat_age")).order_by(Node.name)
    if nodes is not None:
        query = query.where(Node.name.in_(nodes))
    gpus_by_node: dict[str, list[dict]] = {}
    for gpu in gpu_records(session, heartbeat_timeout, nodes):
        gpus_by_node.setdefault(gpu["node"], []).append(gpu)
    records = []
    for node, heartbeat_age in session.execute(query):
        gpus = gpus_by_node.get(node.name, [])
        heartbeat_age = None if heartbeat_age is None else float(heartbeat_age)
        silent = heartbeat_age is None or heartbeat_age > heartbeat_timeout
        states = Counter(g["state"] for g in gpus)
        records.append({
            "name": node.name,
            "state": "silent" if silent else "up",
            "reason": ("agent never sent a heartbeat" if heartbeat_age is None else
                       f"no heartbeat for {heartbeat_age:.0f}s (timeout {heartbeat_timeout:.0f}s)"
                       if silent else None),
            "registered_at": node.registered_at,
            "heartbeat_at": node.heartbeat_at,
            "heartbeat_age_s": heartbeat_age,
            "agent_version": node.agent_version,
            "gpus": len(gpus),
            "gpus_up": states["up"],
            "gpus_draining": states["draining"],
            "gpus_down": states["down"],
            "models": dict(sorted(Counter(g["model"] for g in gpus).items())),
            "share_used": sum(g["share_used"] for g in gpus),
            "share_total": 100 * len(gpus),
            "memory_placed_mib": sum(g["memory_placed_mib"] for g in gpus),
            "memory_mib": sum(g["memory_mib"] for g in gpus),
        })
    return records


def placement_records(session: Session, *, active_only: bool = True, nodes: Sequence[str] | None = None,
                      job_ids: Sequence[int] | None = None, uids: Sequence[int] | None = None,
                      states: Sequence[str] | None = None) -> list[dict]:
    """Placements, newest first, with the GPU they are on."""
    query = sa.select(Placement, Gpu).join(Gpu, Gpu.uuid == Placement.gpu_uuid).order_by(
        Placement.placed_at.desc(), Placement.id.desc())
    if active_only and not states:
        query = query.where(Placement.state.in_(ACTIVE_STATES))
    if states:
        query = query.where(Placement.state.in_(states))
    if nodes is not None:
        query = query.where(Gpu.node.in_(nodes))
    if job_ids:
        query = query.where(Placement.job_id.in_(job_ids))
    if uids:
        query = query.where(Placement.uid.in_(uids))
    return [
        {
            "id": p.id,
            "job_id": p.job_id,
            "uid": p.uid,
            "user": user_name(p.uid),
            "node": gpu.node,
            "gpu_index": gpu.index,
            "gpu_uuid": gpu.uuid,
            "gres_type": gpu.gres_type,
            "model": gpu.model,
            "share": p.share,
            "requested_share": p.requested_share,
            "memory_mib": p.memory_mib,
            "whole": p.whole,
            "slo_class": p.slo_class,
            "state": p.state,
            "reason": p.reason,
            "placed_at": p.placed_at,
            "pinned_at": p.pinned_at,
            "started_at": p.started_at,
            "ended_at": p.ended_at,
        }
        for p, gpu in session.execute(query)
    ]


def node_login_records(session: Session) -> list[dict]:
    """Which node each GPU-node login writes for (``*``: every node), and whether that login still
    exists and holds the agent or node role."""
    rows = session.execute(sa.text(
        "SELECT l.login, l.node, r.rolname IS NOT NULL AS exists, "
        "coalesce(pg_has_role(r.oid, 'slurm_vgpu_agent', 'MEMBER') OR pg_has_role(r.oid, 'slurm_vgpu_node', 'MEMBER'), "
        "false) AS node_role "
        "FROM node_logins l LEFT JOIN pg_roles r ON r.rolname = l.login ORDER BY l.login")).mappings()
    return [dict(row) for row in rows]


def map_node_login(session: Session, login: str, node: str | None) -> None:
    """Let ``login`` write the rows of ``node`` only (``*``: every node); None removes the mapping,
    after which the login writes no row."""
    if node is None:
        session.execute(sa.delete(NodeLogin).where(NodeLogin.login == login))
        return
    session.execute(sa.dialects.postgresql.insert(NodeLogin).values(login=login, node=node)
                    .on_conflict_do_update(index_elements=[NodeLogin.login], set_={"node": node}))
