"""The prolog's and epilog's few queries, in plain psycopg: importing SQLAlchemy and Alembic would
cost more than the whole prolog should take."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import psycopg

from slurm_vgpu.contract import ACTIVE_STATES  # placements that hold capacity
from slurm_vgpu.db import CONNECT_OPTIONS, libpq_url


@dataclass(frozen=True)
class JobPlacement:
    id: int
    job_id: int
    uid: int
    share: int
    memory_mib: int | None
    state: str
    gpu_uuid: str
    gpu_minor: int
    node: str
    job_submit_time: int  # with job_id, names the job (0: written before it was recorded)
    whole: bool  # a whole GPU, given natively (no MPS)


# A JobPlacement's columns, in order.
_SELECT = ("SELECT p.id, p.job_id, p.uid, p.share, p.memory_mib, p.state, g.uuid, g.minor, g.node, p.job_submit_time, "
           "p.whole FROM placements p JOIN gpus g ON g.uuid = p.gpu_uuid ")


def connect(database_url: str, timeout: float = 3.0) -> psycopg.Connection:
    """A libpq connection to slurm-vgpu.conf's DatabaseUrl."""
    return psycopg.connect(libpq_url(database_url),
                           connect_timeout=max(1, int(timeout)), autocommit=True, options=CONNECT_OPTIONS)


# How Postgres words a refusal for want of a connection slot (SQLSTATE 53300, which libpq does not
# pass on for a refused connection): max_connections, a role's or a database's CONNECTION LIMIT,
# the slots reserved for superusers.
_FULL = ("too many clients", "too many connections", "connection slots are reserved")


def server_full(exc: psycopg.OperationalError) -> bool:
    """Whether Postgres answered but had no connection slot left: the connections of other hooks
    free it within seconds, unlike a server that does not answer."""
    return any(words in str(exc) for words in _FULL)


def connect_retrying(database_url: str, within: float, within_full: float | None = None) -> psycopg.Connection:
    """:func:`connect`, tried again for up to ``within`` seconds (a Postgres restart or failover
    takes a few), or up to ``within_full`` while the server answers that it is full (a burst of
    prologs can hold every slot); the last error is raised when neither comes right. Retries are
    spread at random so that the hooks that were refused together do not all come back together."""
    started = time.monotonic()
    while True:
        limit = started + within
        try:
            return connect(database_url, timeout=min(3.0, max(1.0, limit - time.monotonic())))
        except psycopg.OperationalError as exc:
            if within_full is not None and server_full(exc):
                limit = started + within_full
            pause = random.uniform(0.2, 1.0)
            if time.monotonic() + pause >= limit:
                raise
            time.sleep(pause)


def active_placements(conn: psycopg.Connection, job_id: int) -> list[JobPlacement]:
    """The job's active placements, oldest first: one for a slice, one per GPU for whole GPUs."""
    rows = conn.execute(
        _SELECT + "WHERE p.job_id = %s AND p.state = ANY(%s) ORDER BY p.id",
        (job_id, list(ACTIVE_STATES)),
    ).fetchall()
    return [JobPlacement(*row) for row in rows]


def mark_running(conn: psycopg.Connection, *placements: JobPlacement) -> bool:
    """The placements (a job's, all of them) are running now, in one statement; False when one had
    ended meanwhile: an ended placement is never brought back."""
    return conn.execute(
        "UPDATE placements SET state = 'running', started_at = coalesce(started_at, now()) "
        "WHERE id = ANY(%s) AND state = ANY(%s)",
        ([p.id for p in placements], list(ACTIVE_STATES)),
    ).rowcount == len(placements)


def mark_released(conn: psycopg.Connection, *placements: JobPlacement) -> None:
    """The placements (a job's, all of them) are released, in one statement."""
    conn.execute("UPDATE placements SET state = 'released', ended_at = clock_timestamp() "
                 "WHERE id = ANY(%s) AND state = ANY(%s)", ([p.id for p in placements], list(ACTIVE_STATES)))


def running_on(conn: psycopg.Connection, node: str, for_at_least: float) -> list[JobPlacement]:
    """The node's placements that have been running for at least ``for_at_least`` seconds."""
    rows = conn.execute(
        _SELECT + "WHERE g.node = %s AND p.state = 'running' "
        "AND p.started_at < now() - make_interval(secs => %s)",
        (node, for_at_least),
    ).fetchall()
    return [JobPlacement(*row) for row in rows]


def node_gpu_minors(conn: psycopg.Connection, node: str) -> list[int]:
    return [r[0] for r in conn.execute("SELECT minor FROM gpus WHERE node = %s", (node,))]


def record_event(conn: psycopg.Connection, kind: str, message: str, job_id: int | None = None,
                 gpu_uuid: str | None = None, node: str | None = None) -> None:
    conn.execute(
        "INSERT INTO events (kind, job_id, gpu_uuid, node, message) VALUES (%s, %s, %s, %s, %s)",
        (kind, job_id, gpu_uuid, node, message),
    )
