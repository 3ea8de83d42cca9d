"""What the admin commands share: the configuration, the database and Slurm, opened lazily.

Nothing is read until a command needs it, so ``--help`` and ``render --inventory`` work on a laptop
without a config file or a database. Failures of the outside world become one-line errors that say
which thing failed and what to check (exit 1); a bad ``--config`` is bad input (exit 2).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import click
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ..adapters.slurm import Slurm, SlurmError
from ..config import DEFAULT_PATH, Config, ConfigError, load
from ..db import engine as db
from ..hostlist import HostlistError, expand

DATABASE_ENV = "SLURM_VGPU_DATABASE_URL"


@dataclass
class Runtime:
    config_path: Path | None = None

    @cached_property
    def config(self) -> Config:
        try:
            return load(self.config_path)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--config") from exc

    @cached_property
    def database_url(self) -> URL:
        """SLURM_VGPU_DATABASE_URL when set (a shell pointed at a dev cluster), else DatabaseUrl."""
        return db.database_url(os.environ.get(DATABASE_ENV) or self.config.database_url)

    @property
    def database_url_source(self) -> str:
        if os.environ.get(DATABASE_ENV):
            return f"the environment's {DATABASE_ENV}"
        return f"DatabaseUrl= in {self.config_path or os.environ.get('SLURM_VGPU_CONF') or DEFAULT_PATH}"

    @cached_property
    def engine(self) -> sa.Engine:
        return db.make_engine(self.database_url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction; database failures become errors that name the URL and the fix."""
        with database_errors(self.database_url, self.database_url_source), db.session_scope(self.engine) as session:
            yield session

    def slurm(self) -> Slurm:
        return Slurm(self.config.slurm_conf)


pass_runtime = click.make_pass_decorator(Runtime, ensure=True)


@contextmanager
def database_errors(url: URL, source: str) -> Iterator[None]:
    where = url.render_as_string(hide_password=True)
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise click.ClickException(f"{db.unreachable(url, exc)} (this URL comes from {source})") from exc
    except sa.exc.ProgrammingError as exc:
        if "does not exist" in str(exc.orig):
            raise click.ClickException(
                f"database {where} has no slurm-vgpu schema or an old one ({_first_line(exc.orig)}); "
                "run: slurm-vgpu db upgrade"
            ) from exc
        raise
    except sa.exc.IntegrityError as exc:  # the capacity guard or a constraint said no
        raise click.ClickException(f"the database refused the change: {_first_line(exc.orig)}") from exc


@contextmanager
def slurm_errors() -> Iterator[None]:
    try:
        yield
    except SlurmError as exc:
        raise click.ClickException(
            f"{exc}. Is slurmctld up (scontrol ping), and SLURM_CONF or SlurmConf= in slurm-vgpu.conf right?"
        ) from exc


def hostnames(value: str | None, param_hint: str = "--node") -> list[str] | None:
    """A Slurm hostlist option as names; bad syntax is bad usage (exit 2)."""
    if value is None:
        return None
    try:
        return expand(value)
    except HostlistError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from exc


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else "no detail"
