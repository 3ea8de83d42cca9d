"""A self-contained install: the built wheel alone in a fresh virtualenv (its dependencies from the
package index), used from outside the checkout: the migrations, the Slurm templates and the SPANK
sources must all come from the wheel, and the plugin it builds exports only what Slurm looks up."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from slurm_vgpu import render
from slurm_vgpu.db import engine as db

from ..conftest import SERVER_URL

CHECKOUT = Path(__file__).resolve().parents[2]
GOLDEN = CHECKOUT / "tests" / "golden"
# What a wheel is built from (pyproject.toml's packages and readme); copied, so that a stale build/
# directory in the checkout cannot leak into the wheel.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "slurm_vgpu", "slurm_vgpu_dev")
# SPANK_PLUGIN() (slurm/spank.h) and the callbacks the plugin defines: all Slurm looks up in it
PLUGIN_SYMBOLS = {"plugin_name", "plugin_type", "plugin_version", "spank_plugin_version", "slurm_spank_init",
                  "slurm_spank_init_post_opt", "slurm_spank_task_init_privileged", "slurm_spank_task_post_fork",
                  "slurm_spank_task_init", "slurm_spank_exit"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    (base / "src").mkdir()
    for name in WHEEL_SOURCES:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, base / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.so"))
        else:
            shutil.copy2(source, base / "src" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(base / "dist"), str(base / "src")], check=True)
    wheels = list((base / "dist").glob("slurm_vgpu-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    subprocess.run([str(base / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q",
                    "install", str(wheels[0])], check=True, cwd=base)
    return base / "venv"


def run(venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """A command of the installed package, from a directory outside the checkout."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SLURM_VGPU_CONF")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          cwd=venv.parent, env={**clean, **env})


def test_the_package_runs_from_the_wheel_not_the_checkout(venv):
    result = run(venv, "python", "-c", "import slurm_vgpu; print(slurm_vgpu.__file__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(venv)), result.stdout
    assert "dist-info" in str(next(venv.glob("lib/python*/site-packages/slurm_vgpu-*.dist-info")))


def test_db_upgrade_creates_a_fresh_database_from_the_wheels_migrations(venv):
    url = db.database_url(SERVER_URL).set(database=f"slurm_vgpu_test_wheel_{uuid.uuid4().hex[:8]}")
    text = url.render_as_string(hide_password=False)
    try:
        result = run(venv, "slurm-vgpu", "db", "upgrade", "--create", SLURM_VGPU_DATABASE_URL=text)
        assert result.returncode == 0, result.stderr
        assert "is at the newest schema" in result.stderr
        engine = db.make_engine(text)
        try:
            with engine.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        finally:
            engine.dispose()
        assert {"nodes", "gpus", "placements", "events"} <= tables
        assert revision == ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    finally:
        db.drop_database(url)


def test_render_uses_the_wheels_templates(venv, tmp_path):
    inventory = [a for p in sorted((GOLDEN / "inventory").glob("*.json")) for a in ("--inventory", str(p))]
    result = run(venv, "slurm-vgpu", "render", "--output-dir", str(tmp_path), *inventory)
    assert result.returncode == 0, result.stderr
    for name in render.SITE_FILES:
        assert (tmp_path / name).read_text() == (GOLDEN / name).read_text(), name


def test_spank_build_compiles_the_wheels_sources_into_a_plugin_exporting_only_slurms_symbols(venv, tmp_path):
    result = run(venv, "slurm-vgpu", "spank", "build", "--build-dir", str(tmp_path / "spank"))
    assert result.returncode == 0, result.stderr
    plugin = Path(result.stdout.strip())
    assert plugin == tmp_path / "spank" / "slurm_vgpu.so" and plugin.exists()
    nm = subprocess.run(["nm", "-D", "--defined-only", str(plugin)], capture_output=True, text=True, check=True)
    assert {line.split()[-1] for line in nm.stdout.splitlines()} == PLUGIN_SYMBOLS, nm.stdout
    dynamic = subprocess.run(["readelf", "-d", "-l", "-W", str(plugin)], capture_output=True, text=True, check=True)
    assert "BIND_NOW" in dynamic.stdout and "GNU_RELRO" in dynamic.stdout  # full RELRO
    assert "__stack_chk_fail" in subprocess.run(["nm", "-D", str(plugin)], capture_output=True, text=True).stdout
