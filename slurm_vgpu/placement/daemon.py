"""``slurm-vgpu placement run``: one leader at a time, a cycle every CycleInterval seconds.

Leadership is a Postgres session advisory lock held on a dedicated connection: it goes away with the
process or its connection, so a killed leader is replaced within one interval. Even two leaders could
not oversubscribe a GPU or place a job twice: the capacity guard and the one-active-placement-per-job
index refuse the second commit.
"""
from __future__ import annotations

import logging
import signal
import time

import sqlalchemy as sa

from ..adapters.slurm import Slurm, SlurmError
from ..config import Config
from ..db.engine import make_engine
from .cycle import KeptPlacer, collector_paused, run_cycle
from .preempting import Preemptions
from .wait_notes import WaitNotes

log = logging.getLogger("slurm_vgpu.placement")

LEADER_LOCK = 0x76677075_0001  # "vgpu" + 1


class Leadership:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.connection: sa.Connection | None = None
        self.since = 0.0  # monotonic time leadership was taken

    def held(self) -> bool:
        """True while we hold the lock; tries to take it when we do not."""
        if self.connection is not None:
            try:
                self.connection.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.DBAPIError:
                log.warning("lost the leader lock's connection; standing down")
                self._drop()
        try:
            connection = self.engine.connect()
            if connection.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}):
                connection.commit()
                self.connection = connection
                self.since = time.monotonic()
                log.info("became the placement leader")
                return True
            connection.close()
        except sa.exc.OperationalError as exc:
            log.warning("database unreachable: %s", str(exc).splitlines()[0])
        return False

    def _drop(self) -> None:
        try:
            self.connection.invalidate()
        finally:
            self.connection = None


def run(config: Config, once: bool = False) -> None:
    engine = make_engine(config.database_url, pool_size=2)
    try:
        _loop(engine, config, once)
    finally:
        engine.dispose()  # the leader lock goes with its connection


def _loop(engine: sa.Engine, config: Config, once: bool) -> None:
    slurm = Slurm(config.slurm_conf)
    leadership = Leadership(engine)
    kept = KeptPlacer(config)
    notes = WaitNotes()
    preemptions = Preemptions()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        started = time.monotonic()
        if leadership.held():
            try:
                settled = time.monotonic() - leadership.since > 2 * config.heartbeat_interval
                with collector_paused():
                    report = run_cycle(engine, slurm, config, may_cancel=settled, kept=kept, notes=notes,
                                       preemptions=preemptions)
                if report.placed or report.cancelled or report.released or report.unpinned:
                    log.info("cycle: placed %s released %s cancelled %s unpinned %s", report.placed,
                             report.released, list(report.cancelled), report.unpinned)
            except (SlurmError, sa.exc.OperationalError) as exc:
                log.warning("cycle failed, will retry: %s", str(exc).splitlines()[0])
            except Exception:  # a dead daemon places nothing for anyone: log the bug and go on
                log.exception("cycle failed unexpectedly, will retry")
        if once:
            return
        time.sleep(max(0.0, config.cycle_interval - (time.monotonic() - started)))
