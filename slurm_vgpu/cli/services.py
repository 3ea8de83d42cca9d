"""The long-running services: ``slurm-vgpu placement run`` (one leader per cluster, on the
controller) and ``slurm-vgpu agent run`` (one per GPU node)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import click

from .. import config as vgpu_config
from .runtime import Runtime

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@click.group()
def placement() -> None:
    """Place waiting vgpu jobs on GPUs (run one per cluster, on the controller host)."""


@placement.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="slurm-vgpu.conf (default: the global --config, SLURM_VGPU_CONF, /etc/slurm/slurm-vgpu.conf).")
@click.option("--once", is_flag=True, help="Run one cycle and exit (cron-style, or for debugging).")
@click.pass_obj
def run_placement(runtime: Runtime, config_path: Path | None, once: bool) -> None:
    """Run placement cycles until SIGTERM; only the leader (a Postgres advisory lock) places."""
    from ..placement import daemon

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    config = (Runtime(config_path) if config_path else runtime).config
    daemon.run(config, once=once)


@click.group()
def agent() -> None:
    """Keep this node's GPUs registered, alive and fenced in the placement database."""


@agent.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="slurm-vgpu.conf [env SLURM_VGPU_CONF].")
@click.option("--metrics-port", type=int, help="Serve metrics on this port instead of MetricsPort "
              "(dev clusters: one agent per node on one machine); 0 turns metrics off.")
def run_agent(config_path: str | None, metrics_port: int | None) -> None:
    """Register this node's GPUs, then heartbeat, supervise MPS, enforce caps and serve metrics until stopped."""
    from ..adapters.gpus import InventoryError, inventory_from
    from ..adapters.slurm import Slurm
    from ..agent import daemon, guard, metrics
    from ..agent.freezer import Freezer
    from ..agent.procs import JobIds
    from ..db.engine import make_engine

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        config = vgpu_config.load(config_path)
        if metrics_port is not None:
            config = dataclasses.replace(config, metrics_port=metrics_port)
        settings = guard.settings_from(config)
    except vgpu_config.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    node = config.node
    agent_metrics = metrics.AgentMetrics(node)
    if config.metrics_port:
        metrics.serve(agent_metrics, config.metrics_port, config.metrics_address)
    slurm = Slurm(config.slurm_conf)
    job_of_sluid = JobIds(slurm.jobs)
    worker = daemon.Agent(
        config=config, engine=make_engine(config.database_url, pool_size=2), slurm=slurm,
        inventory=inventory_from(config.inventory_for(node)), metrics=agent_metrics,
        freezer=Freezer(node, job_of_sluid=job_of_sluid), job_of_sluid=job_of_sluid,
        settings=settings,
    )
    daemon.stop_on_signals(worker)
    try:
        worker.run()
    except InventoryError as exc:
        raise click.ClickException(str(exc)) from exc
