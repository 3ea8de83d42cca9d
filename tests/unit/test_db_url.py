"""One rule for slurm-vgpu.conf's DatabaseUrl: SQLAlchemy gets the psycopg driver, libpq (the prolog)
none, whichever form the file gives; and a URL keeps its password on its way to either."""
from __future__ import annotations

import subprocess
import sys

import pytest

from slurm_vgpu.db import engine as db
from slurm_vgpu.db import libpq_url, sqlalchemy_url


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"])
def test_every_postgres_form_reaches_both_sides_as_theirs(scheme):
    url = f"{scheme}://node:pw@db.example.org:5432/slurm_vgpu"
    assert sqlalchemy_url(url) == "postgresql+psycopg://node:pw@db.example.org:5432/slurm_vgpu"
    assert libpq_url(url) == "postgresql://node:pw@db.example.org:5432/slurm_vgpu"
    assert db.database_url(url).drivername == "postgresql+psycopg"


def test_a_url_object_keeps_its_password():
    """str() of a SQLAlchemy URL masks the password: an engine made from the CLI's URL must not."""
    url = db.database_url("postgresql://node:s3cret@db.example.org/slurm_vgpu")
    assert db.make_engine(url).url.password == "s3cret"
    assert db.database_url(url).password == "s3cret"


def test_a_url_encoded_password_reaches_alembic_as_written():
    """Ansible URL-encodes passwords; % is ConfigParser's interpolation sign in Alembic's options."""
    url = "postgresql+psycopg://admin:p%2Fw%40d@db.example.org/slurm_vgpu"
    assert db.alembic_config(url).get_main_option("sqlalchemy.url") == url


def test_the_prolog_imports_no_sqlalchemy():
    """It would cost more than the whole prolog should take (docs/node.md)."""
    probe = "import sys, slurm_vgpu.node.__main__; print(sorted({'sqlalchemy', 'alembic'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
