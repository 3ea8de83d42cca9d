"""The whole slurm-vgpu system on a dev cluster: Slurm plus our database and daemons."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from slurm_vgpu.db import engine
from . import releases
from .cluster import Cluster, ClusterError, Service, database_name
from .layout import DEFAULT_LAYOUT


def dev_cluster(directory: Path, port: int, layout: Path = DEFAULT_LAYOUT, database_url: str | None = None,
                release: str = releases.DEFAULT) -> Cluster:
    """A cluster wired to its database: ``database_url``, else SLURM_VGPU_DATABASE_URL, else the
    cluster's own database on the local server (:func:`database_name`; created and migrated by ``up``)."""
    if database_url is None:
        url = engine.database_url(None)
        if "SLURM_VGPU_DATABASE_URL" not in os.environ:
            url = url.set(database=database_name(directory))
        database_url = url.render_as_string(hide_password=False)
    return Cluster(
        dir=directory, port=port, layout=layout, database_url=database_url, release=releases.get(release).name,
        before_start=[_migrate], extra_services=[_vgpu_services], after_start=[_wait_registered],
    )


def _migrate(cluster: Cluster) -> None:
    engine.ensure_database(cluster.database_url)
    engine.upgrade(cluster.database_url)


def _wait_registered(cluster: Cluster, timeout: float) -> None:
    """Until every node's agent has registered its GPUs: a cluster is up once a job can be placed.
    (Slurm's nodes may be idle before the agents are: 24.11's slurmd registers in under a second.)"""
    import sqlalchemy as sa

    wanted = {n.name for n in cluster.nodes() if n.gpus}
    deadline = time.monotonic() + timeout
    registered: set[str] = set()
    db = engine.make_engine(cluster.database_url)
    try:
        while True:
            with db.connect() as conn:
                registered = set(conn.scalars(sa.text("SELECT DISTINCT node FROM gpus")))
            if wanted <= registered or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        db.dispose()
    if not wanted <= registered:
        raise ClusterError(f"the agents of {', '.join(sorted(wanted - registered))} registered no GPU in "
                           f"{timeout:.0f}s; see {cluster.dir}/log/agent-<node>.out")


def _vgpu_services(cluster: Cluster) -> list[Service]:
    """The placement daemon on the controller, one agent per node in that node's namespace, each
    serving metrics on its own port (all share one machine): see :func:`agent_metrics_port`."""
    cli = [sys.executable, "-m", "slurm_vgpu"]
    conf = ["--config", str(cluster.vgpu_conf)]
    services = [Service("placement", [*cli, "placement", "run", *conf])]
    services += [
        Service(f"agent-{n.name}", [*cli, "agent", "run", *conf, "--metrics-port", str(agent_metrics_port(cluster, i))],
                # on cgroup v2 nodes the agent sees the node's own cgroup hierarchy, as slurmd does
                **({"enter": f"slurmd-{n.name}"} if cluster.cgroup_root else {"uts": n.name}))
        for i, n in enumerate(cluster.nodes())
    ]
    return services


def agent_metrics_port(cluster: Cluster, position: int) -> int:
    """The metrics port of the agent of the node at ``position`` (0-based): slurmctld's port + 1001
    + position, clear of the slurmd ports (slurmctld's + 1 + position) of this and nearby clusters."""
    return cluster.port + 1001 + position
