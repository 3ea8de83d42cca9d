"""How a node hook waits for its database (real Postgres): a server with no connection slot left is
waited for longer than one that does not answer, as a burst of prologs can hold every slot. The
slot limit here is a role's CONNECTION LIMIT, refused with the same SQLSTATE (53300) and wording
family as max_connections."""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from slurm_vgpu.node import store


@pytest.fixture
def one_slot_url(database_url):
    """A URL of the test database for a role allowed one connection at a time."""
    role = f"slurm_vgpu_test_full_{uuid.uuid4().hex[:8]}"
    with store.connect(database_url) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    yield make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)
    with store.connect(database_url) as admin:
        admin.execute(f'DROP ROLE "{role}"')


def test_a_full_server_is_waited_for_until_a_slot_frees(one_slot_url):
    holder = store.connect(one_slot_url)
    threading.Timer(2.0, holder.close).start()  # another hook ends and frees its slot
    with store.connect_retrying(one_slot_url, within=0.5, within_full=30) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_full_server_is_given_up_on_after_the_full_wait(one_slot_url):
    with store.connect(one_slot_url):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as refused:
            store.connect_retrying(one_slot_url, within=0.5, within_full=3)
        assert store.server_full(refused.value)
        assert time.monotonic() - started >= 2.0  # it kept trying past the short wait


def test_a_server_that_does_not_answer_gets_the_short_wait_only():
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as refused:
        store.connect_retrying("postgresql://postgres@127.0.0.1:9/none", within=1.0, within_full=30)
    assert not store.server_full(refused.value)
    assert time.monotonic() - started < 10
