"""Writing new placements without waiting for Postgres.

A placement write costs the daemon a round trip, the capacity guard, the foreign-key checks and a
WAL flush: about as long as deciding several requests. :class:`PlacementWriter` sends the write and
returns at once, so the daemon decides the next requests while the server works, and asks between
decisions whether the write has landed (docs/architecture.md, "Placement at scale").

The connection is in autocommit: the INSERT is its own transaction, checked whole by the guard's
statement trigger and durable when its result arrives. One write is in flight at a time; libpq's
non-blocking calls (``psycopg.pq``) do the sending and polling, since psycopg's own API waits for
each result.
"""
from __future__ import annotations

import json
import select
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
from psycopg import pq

PLACEMENT_COLUMNS = ("job_id", "job_submit_time", "gpu_uuid", "uid", "share", "requested_share", "memory_mib",
                     "whole", "gpus", "slo_class", "state", "cpus", "node_memory_mib")
# What a row that leaves a column out gets: the column's default.
_DEFAULTS = {"job_submit_time": "0", "whole": "false", "gpus": "1", "cpus": "1"}

# One parameter, the rows as JSON, whatever their number: the statement's text never changes.
INSERT_PLACEMENTS = (
    f"INSERT INTO placements ({', '.join(PLACEMENT_COLUMNS)}) "
    f"SELECT {', '.join(f'coalesce({c}, {_DEFAULTS[c]})' if c in _DEFAULTS else c for c in PLACEMENT_COLUMNS)} "
    "FROM jsonb_populate_recordset(NULL::placements, $1) "
    "RETURNING job_id, gpu_uuid, id"
).encode()


class PlacementWriter:
    """Placements rows sent to Postgres one write at a time, without waiting for the result."""

    def __init__(self, connection: sa.Connection):
        self._driver = connection.connection.dbapi_connection
        if not self._driver.autocommit:
            raise ValueError("a PlacementWriter needs an autocommit connection: each write is its own transaction")
        self._pg = self._driver.pgconn
        self._sent: Sequence[dict] | None = None

    @property
    def busy(self) -> bool:
        """Whether a write is in flight."""
        return self._sent is not None

    def send(self, rows: Sequence[dict]) -> None:
        """Start inserting ``rows`` (dicts of :data:`PLACEMENT_COLUMNS`); the last write must have landed."""
        if self.busy:
            raise RuntimeError("a placements write is already in flight")
        try:
            self._pg.send_query_params(INSERT_PLACEMENTS, [json.dumps(list(rows)).encode()])
        except psycopg.Error as exc:
            raise _dbapi_error(exc, rows) from exc
        self._sent = rows

    def poll(self) -> list[dict] | None:
        """The rows of the write in flight with their ``id``, once committed; None while the server
        works on them. Raises :class:`sqlalchemy.exc.IntegrityError` when the guard (or a
        constraint) refused them: then none was written, and the error's ``params`` are the rows."""
        try:
            self._pg.consume_input()
            if self._pg.is_busy():
                return None
            result = self._pg.get_result()
            while self._pg.get_result() is not None:  # the end of this query's results
                pass
        except psycopg.Error as exc:
            raise _dbapi_error(exc, self._sent) from exc
        rows, self._sent = self._sent, None
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise _dbapi_error(psycopg.errors.error_from_result(result, self._driver.info.encoding), rows)
        # a job of several whole GPUs has a row per GPU: a row is its job and GPU
        ids = {(int(result.get_value(i, 0)), result.get_value(i, 1).decode()): int(result.get_value(i, 2))
               for i in range(result.ntuples)}
        return [dict(row, id=ids[row["job_id"], row["gpu_uuid"]]) for row in rows]

    def wait(self) -> list[dict]:
        """:meth:`poll`, waiting for the server."""
        while (rows := self.poll()) is None:
            select.select([self._pg.socket], [], [])
        return rows

    def write(self, rows: Sequence[dict]) -> list[dict]:
        """Insert ``rows`` and wait for them."""
        self.send(rows)
        return self.wait()


@contextmanager
def placement_writer(engine: sa.Engine) -> Iterator[PlacementWriter]:
    """A writer on a connection of its own. A write still in flight when the block ends early is
    not waited for: the connection is closed, the statement commits or not on its own, and the
    daemon's next reconcile pins whatever it committed."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        writer = PlacementWriter(connection)
        try:
            yield writer
        finally:
            if writer.busy:
                connection.invalidate()


def _dbapi_error(exc: psycopg.Error, rows: Sequence[dict]) -> sa.exc.DBAPIError:
    """The driver's error as SQLAlchemy raises it elsewhere (IntegrityError, OperationalError, ...),
    with the rows of the write as its ``params``."""
    return sa.exc.DBAPIError.instance(INSERT_PLACEMENTS.decode(), list(rows), exc, psycopg.Error,
                                      hide_parameters=True)
