"""``slurm-vgpu placement``: the placement daemon."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from .runtime import Runtime


@click.group()
def placement() -> None:
    """Place held vgpu jobs on GPUs (run one per cluster, on the controller host)."""


@placement.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="slurm-vgpu.conf (default: the global --config, SLURM_VGPU_CONF, /etc/slurm/slurm-vgpu.conf).")
@click.option("--once", is_flag=True, help="Run one cycle and exit (cron-style, or for debugging).")
@click.pass_obj
def run_command(runtime: Runtime, config_path: Path | None, once: bool) -> None:
    """Run placement cycles until SIGTERM; only the leader (a Postgres advisory lock) places."""
    from ..placement import daemon

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = (Runtime(config_path) if config_path else runtime).config
    daemon.run(config, once=once)
