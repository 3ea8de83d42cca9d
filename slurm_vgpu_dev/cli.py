"""``slurm-vgpu-dev``: a real Slurm cluster with simulated GPUs on this machine (demo and tests)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from . import accounting, releases
from . import cluster as devcluster
from .layout import DEFAULT_LAYOUT, LayoutError


def _cluster_options(f):
    f = click.option("--dir", "directory", type=click.Path(path_type=Path), default=devcluster.DEFAULT_DIR,
                     show_default=True, help="Where the cluster keeps configs, logs, spool and PIDs "
                     "[env SLURM_VGPU_DEV_DIR].")(f)
    f = click.option("--port", type=int, default=devcluster.DEFAULT_PORT, show_default=True,
                     help="slurmctld's port; node N's slurmd listens on PORT+N [env SLURM_VGPU_DEV_PORT].")(f)
    return f


def _make_cluster(directory: Path, port: int, layout: Path = DEFAULT_LAYOUT, release: str | None = None
                  ) -> devcluster.Cluster:
    """``release`` None: the one ``up`` last started in the directory, else the default."""
    from .system import dev_cluster

    directory = directory.resolve()
    return dev_cluster(directory, port, layout, release=release or devcluster.recorded_release(directory)
                       or releases.DEFAULT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run a local demo/test cluster: slurmctld and one slurmd per node, GPUs simulated."""


@main.command()
@_cluster_options
@click.option("--layout", type=click.Path(path_type=Path, dir_okay=False), default=DEFAULT_LAYOUT,
              help="TOML file of nodes and their GPU models (default: 4xH100, 4xA100, 8xT4 on 3 nodes).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for idle nodes.")
@click.option("--slurm", "release", metavar="RELEASE", default=None,
              help=f"Slurm release: {', '.join(releases.RELEASES)} (default: the directory's last, else "
                   f"{releases.DEFAULT}); the newer ones run from a root filesystem built once and cached "
                   f"under {releases.ROOTFS_CACHE} [env SLURM_VGPU_DEV_SLURM].", envvar="SLURM_VGPU_DEV_SLURM")
def up(directory: Path, port: int, layout: Path, timeout: float, release: str | None) -> None:
    """Start the cluster (harmless when it is already up) and wait until every node is idle."""
    try:
        if release is not None:
            releases.get(release)
        cluster = _make_cluster(directory, port, layout, release)
        devcluster.up(cluster, timeout)
    except (devcluster.ClusterError, LayoutError, releases.ReleaseError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"cluster up in {cluster.dir}; run: eval \"$(slurm-vgpu-dev env --dir {cluster.dir})\"", err=True)


@main.command()
@_cluster_options
@click.option("--drop-database", is_flag=True, help="Also drop the cluster's own database (kept by default, "
              "like its spool, so the next up goes on from the same state).")
def down(directory: Path, port: int, drop_database: bool) -> None:
    """Stop every process the cluster started, by PID."""
    stopped = devcluster.down(devcluster.Cluster(dir=directory.resolve(), port=port))
    click.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}", err=True)
    if drop_database:
        from slurm_vgpu.db import engine

        url = _make_cluster(directory, port).database_url
        engine.drop_database(url)
        click.echo(f"dropped database {engine.database_url(url).database}", err=True)
        accounting_database = devcluster.database_name(directory.resolve())
        try:
            accounting.drop(accounting_database)
        except accounting.AccountingError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"dropped accounting database {accounting_database} and its MariaDB user", err=True)


@main.command()
@_cluster_options
def env(directory: Path, port: int) -> None:
    """Print the export lines a shell needs to use the cluster (eval "$(slurm-vgpu-dev env)")."""
    for key, value in _make_cluster(directory, port).env().items():
        click.echo(f"export {key}={value}")


@main.command()
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(directory: Path, port: int, as_json: bool) -> None:
    """Which of the cluster's processes are running; exit 1 if any is not."""
    alive = devcluster.status(devcluster.Cluster(dir=directory.resolve(), port=port))
    if as_json:
        click.echo(json.dumps(alive))
    else:
        for name, ok in alive.items():
            click.echo(f"{name:24} {'running' if ok else 'DEAD'}")
    if not alive or not all(alive.values()):
        raise SystemExit(1)


@main.command()
@_cluster_options
def demo(directory: Path, port: int) -> None:
    """Submit a few vgpu jobs (and two bad ones), wait, and show where each ran; exit 1 if any failed."""
    from rich.console import Console

    from .demo import run_demo

    if not run_demo(_make_cluster(directory, port), Console(width=max(Console().width, 150))):
        raise SystemExit(1)


@main.command("capture-fixtures")
@_cluster_options
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where to write (default: tests/fixtures/slurm/<release> of this checkout).")
def capture_fixtures(directory: Path, port: int, out: Path | None) -> None:
    """Submit the fixture jobs to a running cluster and write Slurm's real output for the adapter's
    unit tests (slurm_vgpu_dev/fixtures.py)."""
    from .fixtures import CaptureError, capture

    cluster = _make_cluster(directory, port)
    out = out or Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "slurm" / cluster.release
    try:
        written = capture(cluster, out)
    except CaptureError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Slurm {cluster.release}: wrote {len(written)} files to {out}", err=True)
