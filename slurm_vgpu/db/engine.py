"""Connecting to Postgres, creating databases for tests and the demo, and applying migrations."""
from __future__ import annotations

import os
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import sessionmaker

from ..config import Config
from ..resources import MIGRATIONS
from . import CONNECT_OPTIONS, sqlalchemy_url


class DatabaseError(RuntimeError):
    """The database cannot be reached or is not at the expected schema; the message says what to do."""


def database_url(url: str | URL | None = None) -> URL:
    """The URL from the argument, else ``SLURM_VGPU_DATABASE_URL``, else DatabaseUrl's default.
    A URL object keeps its password (``str()`` of one would mask it)."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    return make_url(sqlalchemy_url(url or os.environ.get("SLURM_VGPU_DATABASE_URL") or Config.database_url))


def make_engine(url: str | URL | None = None, **kwargs) -> sa.Engine:
    return sa.create_engine(database_url(url), pool_pre_ping=True,
                            connect_args={"options": CONNECT_OPTIONS}, **kwargs)


@contextmanager
def session_scope(engine: sa.Engine):
    """One transaction: committed when the block ends, rolled back when it raises."""
    with sessionmaker(engine, expire_on_commit=False).begin() as session:
        yield session


def ensure_database(url: str | URL | None = None) -> URL:
    """Create the database named in the URL if it does not exist (connecting to ``postgres``)."""
    target = database_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database})
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    except sa.exc.OperationalError as exc:
        raise unreachable(target, exc) from exc
    finally:
        admin.dispose()
    return target


def drop_database(url: str | URL) -> None:
    target = database_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


def alembic_config(url: str | URL | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    # an option is ConfigParser text, where % starts an interpolation: a URL-encoded password has some
    config.set_main_option("sqlalchemy.url", database_url(url).render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(url: str | URL | None = None, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(url), revision)
    except sa.exc.OperationalError as exc:
        raise unreachable(database_url(url), exc) from exc


def check(url: str | URL | None = None) -> None:
    """Raise when the models and the migrations disagree (alembic check)."""
    command.check(alembic_config(url))


def unreachable(url: URL, exc: Exception) -> DatabaseError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseError(
        f"cannot reach Postgres at {url.render_as_string(hide_password=True)}: {first_line}. "
        "Is the server running, and is SLURM_VGPU_DATABASE_URL right?"
    )

