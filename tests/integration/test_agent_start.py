"""An agent started while its database refuses connections (a restart, a failover) waits for it
and registers once it answers, instead of exiting and leaving its node silent. Real Postgres: the
test's own database is closed to connections, then opened again."""
from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

import sqlalchemy as sa

from slurm_vgpu.agent import daemon
from slurm_vgpu.config import Config
from slurm_vgpu.db import engine as db

from ..conftest import SERVER_URL


def allow_connections(admin: sa.Engine, name: str, allowed: bool) -> None:
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))


def test_an_agent_waits_for_its_database_to_register(monkeypatch):
    url = db.database_url(SERVER_URL).set(database=f"slurm_vgpu_test_{uuid.uuid4().hex[:10]}")
    db.ensure_database(url)
    admin = db.make_engine(db.database_url(SERVER_URL), isolation_level="AUTOCOMMIT")
    engine = db.make_engine(url, poolclass=sa.pool.NullPool)
    tries = []

    def register(engine, node, inventory, *settings):  # the real one reads the GPUs first; here only the database
        tries.append(time.monotonic())
        engine.connect().close()

    monkeypatch.setattr(daemon, "register", register)
    agent = daemon.Agent(Config(database_url=url.render_as_string(hide_password=False), agent_interval=0.05),
                         engine, slurm=None, inventory=None, metrics=None,
                         freezer=SimpleNamespace(thaw_leftovers=list), settings=SimpleNamespace(enabled=False),
                         job_of_sluid=None)
    monkeypatch.setattr(agent, "tick", agent.stop.set)  # one round after registering, then stop
    allow_connections(admin, url.database, False)
    try:
        thread = threading.Thread(target=agent.run)
        thread.start()
        deadline = time.monotonic() + 10
        while len(tries) < 3 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive()  # refused, and still there
        allow_connections(admin, url.database, True)
        thread.join(timeout=30)
        assert not thread.is_alive() and agent.stop.is_set()  # registered, then ran its round
    finally:
        agent.stop.set()
        allow_connections(admin, url.database, True)
        engine.dispose()
        admin.dispose()
        db.drop_database(url)
