"""Postgres: the placement's source of truth (inventory, capacity, placements, events).

What every connection of ours shares, the prolog's included, which must not import SQLAlchemy (it
costs more than the whole prolog should take): the libpq options and the URL rule.
"""
from __future__ import annotations

import re

# libpq options for every connection of ours, the prolog's included. The capacity guard refuses
# placement writes above READ COMMITTED (migration 0003): a server whose default is higher must not
# turn each of our writes into a refusal.
CONNECT_OPTIONS = r"-c default_transaction_isolation=read\ committed"

# A Postgres URL's scheme, with or without a driver: postgresql://, postgres://, postgresql+psycopg://
_POSTGRES_SCHEME = re.compile(r"^postgres(?:ql)?(?:\+\w+)?://")


def sqlalchemy_url(url: str) -> str:
    """A Postgres URL (slurm-vgpu.conf's DatabaseUrl, in either form) as SQLAlchemy takes it: with the
    psycopg driver, the one slurm-vgpu installs, whatever driver it named. Other URLs are unchanged."""
    return _POSTGRES_SCHEME.sub("postgresql+psycopg://", url, count=1)


def libpq_url(url: str) -> str:
    """The same URL as libpq (psycopg.connect) takes it: plain ``postgresql://``."""
    return _POSTGRES_SCHEME.sub("postgresql://", url, count=1)
