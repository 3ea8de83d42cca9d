"""Each GPU node's database login writes its own node's rows only (migration 0006): a login taken
from one node cannot end another node's slices, mark its GPUs down or register GPUs under its name.
Real Postgres, row-level security as the migration states it."""
from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from slurm_vgpu.cli import main
from slurm_vgpu.db import engine as db

from .test_schema import add_gpu, node_role, place


@pytest.fixture
def two_nodes(clean_db):
    """GPU-1 on node1 and GPU-2 on node2, a running slice on each."""
    add_gpu(clean_db, "GPU-1")
    with clean_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO nodes (name) VALUES ('node2')"))
    add_gpu(clean_db, "GPU-2")
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE gpus SET node = 'node2' WHERE uuid = 'GPU-2'"))
    place(clean_db, 1, 30, gpu="GPU-1")
    place(clean_db, 2, 30, gpu="GPU-2")
    return clean_db


def as_role(engine, role: str, sql: str, **params) -> int:
    """Run one statement as ``role``; the number of rows it changed."""
    with engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL ROLE {role}"))
        return conn.execute(sa.text(sql), params).rowcount


def test_a_nodes_login_ends_its_own_slices_and_no_other_nodes(two_nodes):
    node1 = node_role(two_nodes, "node1")
    ended = "UPDATE placements SET state = 'released', ended_at = now() WHERE job_id = :job"
    assert as_role(two_nodes, node1, ended, job=2) == 0  # node2's slice: not its row to change
    assert as_role(two_nodes, node1, ended, job=1) == 1
    with two_nodes.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT job_id, state FROM placements")).all()) == \
            {1: "released", 2: "pinned"}


def test_a_nodes_login_cannot_touch_another_nodes_gpus_or_claim_them(two_nodes):
    node1 = node_role(two_nodes, "node1")
    assert as_role(two_nodes, node1, "UPDATE gpus SET state = 'down' WHERE uuid = 'GPU-2'") == 0
    assert as_role(two_nodes, node1, "UPDATE nodes SET heartbeat_at = now() WHERE name = 'node2'") == 0
    with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
        as_role(two_nodes, node1, "UPDATE gpus SET node = 'node2' WHERE uuid = 'GPU-1'")
    with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
        as_role(two_nodes, node1, "INSERT INTO nodes (name) VALUES ('node3')")
    assert as_role(two_nodes, node1, "UPDATE gpus SET state = 'down' WHERE uuid = 'GPU-1'") == 1
    with two_nodes.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT uuid, state FROM gpus")).all()) == {"GPU-1": "down", "GPU-2": "up"}


def test_an_unmapped_login_writes_nothing_and_a_star_login_writes_every_node(two_nodes):
    with two_nodes.begin() as conn:
        conn.execute(sa.text("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'slurm_vgpu_test_any') "
                             "THEN CREATE ROLE slurm_vgpu_test_any NOLOGIN IN ROLE slurm_vgpu_agent; END IF; END $$"))
        conn.execute(sa.text("DELETE FROM node_logins WHERE login = 'slurm_vgpu_test_any'"))
    down = "UPDATE gpus SET state = 'draining'"
    assert as_role(two_nodes, "slurm_vgpu_test_any", down) == 0
    url = two_nodes.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(main, ["db", "node-login", "--url", url, "slurm_vgpu_test_any", "*"])
    assert result.exit_code == 0, result.output
    assert as_role(two_nodes, "slurm_vgpu_test_any", down) == 2
    result = CliRunner().invoke(main, ["db", "node-logins", "--url", url, "--json"])
    assert {"login": "slurm_vgpu_test_any", "node": "*", "exists": True, "node_role": True} in \
        __import__("json").loads(result.output)["node_logins"]


def test_the_placement_role_still_places_and_drains_on_every_node(two_nodes):
    assert as_role(two_nodes, "slurm_vgpu_placement", "UPDATE gpus SET state = 'draining'") == 2
    assert as_role(two_nodes, "slurm_vgpu_placement",
                   "UPDATE placements SET state = 'failed', ended_at = now()") == 2


def test_mapping_a_login_that_does_not_exist_says_how_to_create_it(clean_db):
    url = clean_db.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(main, ["db", "node-login", "--url", url, "no_such_login", "gpu01"])
    assert result.exit_code == 1 and "CREATE ROLE no_such_login LOGIN IN ROLE slurm_vgpu_agent" in result.output
    result = CliRunner().invoke(main, ["db", "node-login", "--url", url, "no_such_login"])
    assert result.exit_code == 2 and "or --remove" in result.output


def test_logins_that_held_the_node_roles_before_the_upgrade_keep_acting_for_every_node(database_url):
    """An upgrade must not cut a running cluster off: the migration maps the logins it finds."""
    url = db.database_url(database_url).set(database=f"{db.database_url(database_url).database}_0006")
    db.ensure_database(url)
    try:
        db.upgrade(url, "0005")
        admin = db.make_engine(url)
        with admin.begin() as conn:
            conn.execute(sa.text("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'slurm_vgpu_test_old') "
                                 "THEN CREATE ROLE slurm_vgpu_test_old LOGIN IN ROLE slurm_vgpu_node; END IF; END $$"))
        db.upgrade(url)
        with admin.connect() as conn:
            assert conn.scalar(sa.text("SELECT node FROM node_logins WHERE login = 'slurm_vgpu_test_old'")) == "*"
        admin.dispose()
    finally:
        db.drop_database(url)
