"""What a GPU's MPS servers are owed by the slices in Postgres: each user's caps, and which users
still need their server. Plain psycopg on the caller's connection, as the prolog's own queries
(:mod:`slurm_vgpu.node.store`): the prolog must not pay for importing SQLAlchemy."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..contract import ACTIVE_STATES

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class Caps:
    """What one user's server on a GPU is capped to."""

    share: int  # active thread percentage
    memory_mib: int | None  # pinned device memory; None: uncapped


def caps_of(slices: Iterable[tuple[int, int | None]]) -> Caps | None:
    """The caps of a server from its user's slices on the GPU as (share, memory_mib): the largest
    share and the largest memory cap, no memory cap when one slice has none; None without a slice.
    Caps apply to each client, so the largest slice bounds them all (a job's own, smaller share is
    its client variable, which can only lower the server's)."""
    slices = list(slices)
    if not slices:
        return None
    memories = [memory for _, memory in slices]
    return Caps(max(share for share, _ in slices), None if None in memories else max(memories))


def tightest(caps: Iterable[Caps]) -> Caps:
    """Caps no larger than any of ``caps``: the smallest share, and the smallest memory cap (none
    only when none of them has one: a slice without a memory cap never shares a GPU with another
    user's capped one)."""
    caps = list(caps)
    memories = [c.memory_mib for c in caps if c.memory_mib is not None]
    return Caps(min(c.share for c in caps), min(memories) if memories else None)


def user_caps(conn: psycopg.Connection, gpu_uuid: str, uid: int, including: int | None = None) -> Caps | None:
    """:func:`caps_of` ``uid``'s running slices on a GPU, counting placement ``including`` as running."""
    return caps_of(conn.execute(
        "SELECT share, memory_mib FROM placements WHERE gpu_uuid = %s AND uid = %s AND NOT whole "
        "AND (state = 'running' OR id = %s)",
        (gpu_uuid, uid, including),
    ).fetchall())


def active_uids(conn: psycopg.Connection, gpu_uuid: str) -> set[int]:
    """The users with a slice placed, pinned or running on a GPU: those whose server is not idle (a
    whole-GPU placement is no slice: its job runs without MPS)."""
    return {r[0] for r in conn.execute(
        "SELECT DISTINCT uid FROM placements WHERE gpu_uuid = %s AND state = ANY(%s) AND NOT whole",
        (gpu_uuid, list(ACTIVE_STATES)))}
