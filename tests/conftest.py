"""Shared fixtures: a fresh Postgres database per test run and a real local Slurm cluster.

Environment knobs (so several runs can share one machine):
  SLURM_VGPU_TEST_DATABASE_URL  server to create test databases on (default: local postgres)
  SLURM_VGPU_TEST_PORT          slurmctld port of the test cluster (default 26817); a run's clusters
                                use ports from it up to about 1,200 above it (the node agents'
                                metrics ports are slurmctld's + 1001 + node), so two runs on one
                                machine need ports at least 1,200 apart
  SLURM_VGPU_TEST_SLURM         Slurm release of the test clusters: 22.05 (default), 24.11, 26.05
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from slurm_vgpu.db import engine as db

SERVER_URL = os.environ.get("SLURM_VGPU_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEST_PORT = int(os.environ.get("SLURM_VGPU_TEST_PORT", "26817"))
TEST_SLURM = os.environ.get("SLURM_VGPU_TEST_SLURM") or "22.05"


def new_database() -> str:
    """Create an empty database with a unique name and return its URL."""
    url = db.database_url(SERVER_URL).set(database=f"slurm_vgpu_test_{uuid.uuid4().hex[:10]}")
    db.ensure_database(url)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url():
    """One migrated database for the whole run; dropped at the end."""
    url = new_database()
    db.upgrade(url)
    yield url
    db.drop_database(url)


@pytest.fixture(scope="session")
def db_engine(database_url):
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clean_db(db_engine):
    """An empty schema for one test (tables truncated before it runs)."""
    with db_engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE events, placements, gpus, nodes RESTART IDENTITY CASCADE"))
    return db_engine


def have_slurm() -> bool:
    if TEST_SLURM != "22.05":
        return True  # from its root filesystem, built by the first cluster's up
    return all(shutil.which(p, path=f"/usr/sbin:{os.environ.get('PATH', '')}") for p in ("slurmctld", "slurmd", "sbatch"))


def cluster_dir(name: str) -> Path:
    """A directory job users can read (slurm.conf must be readable by them; pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f"slurm-vgpu-{name}-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def start_cluster(directory: Path, database_url: str, layout: Path | None = None, port: int = TEST_PORT,
                  before_start=()):
    """Bring up the whole system (Slurm, placement, agents) on a dev cluster for tests;
    ``before_start``: changes to its configs once written (Cluster.before_start)."""
    from slurm_vgpu_dev import cluster as devcluster
    from slurm_vgpu_dev.system import dev_cluster

    kwargs = {"layout": layout} if layout else {}
    cluster = dev_cluster(directory, port, database_url=database_url, release=TEST_SLURM, **kwargs)
    cluster.before_start.extend(before_start)
    devcluster.up(cluster)
    return cluster


def config_lines(slurm_conf: str = "", vgpu_conf: str = ""):
    """A ``before_start`` change: these lines added to the cluster's slurm.conf and slurm-vgpu.conf."""
    def add(cluster) -> None:
        for path, lines in ((cluster.slurm_conf, slurm_conf), (cluster.vgpu_conf, vgpu_conf)):
            with open(path, "a") as conf:
                conf.write(lines)
    return add


@contextmanager
def own_cluster(name: str, layout: str, port: int, before_start=()):
    """A cluster of the given layout TOML, with its own directory, database and ports, for one
    module's tests; stopped when the block ends."""
    directory = cluster_dir(name)
    (directory / "layout.toml").write_text(layout)
    cluster = start_cluster(directory, new_database(), layout=directory / "layout.toml", port=port,
                            before_start=before_start)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@contextmanager
def engine_for(url: str):
    engine = db.make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def stop_cluster(cluster) -> None:
    """Stop it and drop its databases (placements on Postgres, Slurm's accounting on MariaDB)."""
    from slurm_vgpu_dev import accounting
    from slurm_vgpu_dev import cluster as devcluster

    devcluster.down(cluster)
    db.drop_database(cluster.database_url)
    accounting.drop(devcluster.database_name(cluster.dir))
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster():
    """The default 3-node cluster (4xH100, 4xA100, 8xT4) with its own database, shared by e2e
    tests; stopped at the end, also when tests fail."""
    if not have_slurm():
        pytest.fail("Slurm is not installed: run the README's test command, which installs it")
    started = start_cluster(cluster_dir("cluster"), new_database())
    yield started
    stop_cluster(started)


@pytest.fixture(scope="session")
def cluster_engine(cluster):
    """The e2e cluster's own database (placements, events) for assertions."""
    with engine_for(cluster.database_url) as engine:
        yield engine


def slurm(cluster, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm command against the test cluster, as root or as ``user``."""
    env = {**os.environ, **cluster.env()}
    argv = list(args)
    if user:
        # runuser resets PATH; a cluster of another release names its own Slurm programs there
        path = [f"PATH={env['PATH']}"] if "PATH" in cluster.env() else []
        argv = ["runuser", "-u", user, "--", "env", f"SLURM_CONF={cluster.slurm_conf}", *path, *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=check, cwd="/tmp")


LOG_TAIL_LINES = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test on a dev cluster shows the end of that cluster's placement daemon log: what
    the daemon decided is what a failure on another machine (CI) can only be read from."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    from slurm_vgpu_dev.cluster import Cluster

    for name, value in getattr(item, "funcargs", {}).items():
        log = value.dir / "log" / "placement.out" if isinstance(value, Cluster) else None
        if log is not None and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"placement daemon log of {name} (last {len(tail)} lines)", "\n".join(tail)))
