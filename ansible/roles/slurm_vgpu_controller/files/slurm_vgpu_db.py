"""Database state for the slurm_vgpu_controller role, run with the slurm-vgpu virtualenv's Python.

  status  prints {"exists", "current", "head"}: the schema revision against the newest migration
  logins  creates or updates one LOGIN role per component, each granted only its group role
          (created by the first migration), maps a GPU node's logins to that node (``node_logins``,
          migration 0006), and prints {"changed": [...]}

Connection and logins come from the environment (SLURM_VGPU_ADMIN_URL, SLURM_VGPU_LOGINS as JSON,
SLURM_VGPU_PRUNE_NODE_LOGINS: "True" to unmap the logins no GPU node names), never from the
command line. Passwords are compared with the stored SCRAM/MD5 verifier, so an
unchanged password is not set again and a second run reports nothing changed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def connect(database: str | None = None) -> psycopg.Connection:
    url = make_url(os.environ["SLURM_VGPU_ADMIN_URL"])
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        dbname=database or url.database, autocommit=True, connect_timeout=10,
    )


def status() -> dict:
    from alembic.script import ScriptDirectory
    from slurm_vgpu.db.engine import alembic_config

    head = ScriptDirectory.from_config(alembic_config(os.environ["SLURM_VGPU_ADMIN_URL"])).get_current_head()
    name = make_url(os.environ["SLURM_VGPU_ADMIN_URL"]).database
    with connect("postgres") as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    current = None
    if exists:
        with connect() as conn:
            if conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0]:
                row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                current = row[0] if row else None
    return {"exists": exists, "current": current, "head": head}


def password_matches(verifier: str | None, user: str, password: str) -> bool:
    if not verifier:
        return not password
    if verifier.startswith("SCRAM-SHA-256$"):
        iterations_salt, keys = verifier[len("SCRAM-SHA-256$"):].split("$", 1)
        iterations, salt = iterations_salt.split(":", 1)
        stored_key = keys.split(":", 1)[0]
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        return hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key)
    if verifier.startswith("md5"):
        return hmac.compare_digest(verifier, "md5" + hashlib.md5((password + user).encode()).hexdigest())
    return False


def logins() -> dict:
    wanted = json.loads(os.environ["SLURM_VGPU_LOGINS"])  # [{"user", "password", "group", "node"?}]
    database = make_url(os.environ["SLURM_VGPU_ADMIN_URL"]).database
    changed = []
    with connect() as conn:
        for login in wanted:
            user, password, group = login["user"], login["password"], login["group"]
            role = sql.Identifier(user)
            row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            if row is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                changed.append(f"{user}: created")
            elif not row[0]:
                conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
                changed.append(f"{user}: LOGIN")
            try:
                verifier = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)).fetchone()[0]
                same = password_matches(verifier, user, password)
            except psycopg.errors.InsufficientPrivilege:
                same = row is not None  # not a superuser: set the password only when creating the role
            if not same:
                if password:
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(password)))
                else:
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(role))
                changed.append(f"{user}: password")
            member = conn.execute(
                "SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                "JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = %s AND u.rolname = %s",
                (group, user),
            ).fetchone()
            if member is None:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), role))
                changed.append(f"{user}: member of {group}")
            can_connect = conn.execute(
                "SELECT has_database_privilege(%s, %s, 'CONNECT')", (user, database)
            ).fetchone()[0]
            if not can_connect:
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), role))
                changed.append(f"{user}: CONNECT on {database}")
            if login.get("node"):
                changed += map_node(conn, user, login["node"])
        if os.environ.get("SLURM_VGPU_PRUNE_NODE_LOGINS") == "True":
            named = [login["user"] for login in wanted if login.get("node")]
            for (user,) in conn.execute("DELETE FROM node_logins WHERE login <> ALL(%s) RETURNING login", (named,)):
                changed.append(f"{user}: writes no node's rows (no GPU node names it)")
    return {"changed": changed}


def map_node(conn: psycopg.Connection, user: str, node: str) -> list[str]:
    """Let a GPU node's login write that node's rows only."""
    row = conn.execute("SELECT node FROM node_logins WHERE login = %s", (user,)).fetchone()
    if row is not None and row[0] == node:
        return []
    conn.execute("INSERT INTO node_logins (login, node) VALUES (%s, %s) "
                 "ON CONFLICT (login) DO UPDATE SET node = EXCLUDED.node", (user, node))
    return [f"{user}: writes {node}'s rows only"]


if __name__ == "__main__":
    print(json.dumps({"status": status, "logins": logins}[sys.argv[1]]()))
