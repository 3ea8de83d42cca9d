"""``slurm-vgpu serve``: run an inference service as vgpu jobs behind HAProxy (docs/routing.md).

``serve start FILE`` checks the service file, starts HAProxy and one vgpu job per replica, and
leaves a follower running that keeps HAProxy's pool the replicas Slurm runs; ``serve status`` and
``serve stop`` take the service's directory (or its name, for ``./slurm-vgpu-serve-NAME``).
"""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

import click

from ..db.profiles import stored_points
from ..route import serving
from ..route.service import Service, ServiceError, parse
from ..route.weights import batch_rates
from .output import Column, echo_json, document, emit, json_option
from .runtime import Runtime, pass_runtime, slurm_errors

COLUMNS = (
    Column("REPLICA", lambda r: r["replica"]),
    Column("JOBID", lambda r: r["job_id"], "right"),
    Column("STATE", lambda r: r["state"]),
    Column("NODE", lambda r: r["node"]),
    Column("GPU", lambda r: r["gpu"]),
    Column("PORT", lambda r: r["port"], "right"),
    Column("WEIGHT", lambda r: r["weight"], "right"),
    Column("POOL", lambda r: r["pool"], wrap=True),
)


def _directory(name_or_dir: str) -> Path:
    path = Path(name_or_dir)
    return path if path.is_dir() else Path(f"slurm-vgpu-serve-{name_or_dir}")


def _deployment(name_or_dir: str) -> serving.Deployment:
    try:
        return serving.Deployment.load(_directory(name_or_dir).absolute())
    except serving.ServeError as exc:
        raise click.BadParameter(str(exc), param_hint="SERVICE") from None


@click.group("serve")
def serve() -> None:
    """Serve a model from several vgpu jobs behind one router (HAProxy), weighted by speed."""


@serve.command("check")
@click.argument("service_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(service_file: Path) -> None:
    """Check a service file: every problem, each with its line and what to write instead (exit 2)."""
    service = _parse(service_file)
    replicas = (f"{service.replicas} replica(s)" if service.replicas is not None else
                f"replicas for {service.rate:g}/s (sized from profile {service.profile} at start)")
    ports = (f"ports {service.port_of(0)}-{service.port_of(service.replicas - 1)}" if service.replicas is not None
             else f"ports from {service.port}")
    models = f" on {'/'.join(service.models)}" if service.models else ""
    click.echo(f"{service.name}: {replicas} of {service.share}%{models} ({service.slo_class}), {ports}, "
               f"router on {service.listen[0]}:{service.listen[1]}")


def _parse(service_file: Path):
    try:
        return parse(service_file.read_text(), str(service_file))
    except ServiceError as exc:
        raise click.BadParameter("\n" + str(exc), param_hint="SERVICE_FILE") from None


@serve.command("start")
@click.argument("service_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where the service keeps its state, router and logs [default: ./slurm-vgpu-serve-NAME].")
@json_option
@pass_runtime
def start(rt: Runtime, service_file: Path, directory: Path | None, as_json: bool) -> None:
    """Start HAProxy and the replicas of SERVICE_FILE; a follower keeps the pool in step with them."""
    service = _parse(service_file)
    directory = (directory or Path(f"slurm-vgpu-serve-{service.name}")).absolute()
    profiled = _profiled(rt, service)
    slurm = rt.slurm()
    try:
        service = serving.sized(service, profiled)
        deployment = serving.start(service, directory, slurm, profiled)
    except serving.ServeError as exc:
        raise click.ClickException(str(exc)) from None
    config = ["--config", str(rt.config_path)] if rt.config_path else []
    with open(directory / "follow.log", "ab") as follow_log:
        follower = subprocess.Popen([sys.executable, "-m", "slurm_vgpu", *config, "serve", "follow", str(directory)],
                                    stdin=subprocess.DEVNULL, stdout=follow_log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    deployment.follower_pid = follower.pid
    deployment.save()
    if as_json:
        echo_json(document(service={"name": service.name, "dir": str(directory), "jobs": deployment.jobs,
                                    "listen": f"{service.listen[0]}:{service.listen[1]}"}))
    else:
        click.echo(f"{service.name}: router on {service.listen[0]}:{service.listen[1]}, replicas "
                   + ", ".join(f"{name} (job {job_id})" for name, job_id in deployment.jobs.items())
                   + f"; state and logs in {directory}")


def _profiled(rt: Runtime, service: Service) -> dict[int, dict[str, float]]:
    """Per batch size, each profiled GPU model's requests/s at the service's share, when it names a
    Profile."""
    if service.profile is None:
        return {}
    with rt.session() as session:
        points = [point for point, _ in stored_points(session, [service.profile])]
    if not points:
        raise click.ClickException(
            f"Profile={service.profile}: no profile of {service.profile!r} is stored; measure it first "
            f"(slurm-vgpu profile {service.profile} --model MODEL -- COMMAND) or leave Profile out")
    return batch_rates(points, service.share)


@serve.command("follow", hidden=True)
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_runtime
def follow(rt: Runtime, directory: Path) -> None:
    """Keep the pool in step with the replicas until SIGTERM (started by ``serve start``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    serving.follow(serving.Deployment.load(directory), rt.slurm(), rt.config.gpu_speeds, stopping)


@serve.command("status")
@click.argument("service")
@json_option
@pass_runtime
def status(rt: Runtime, service: str, as_json: bool) -> None:
    """Each replica of SERVICE (its directory or name): job, node, GPU, port, weight, whether it serves."""
    deployment = _deployment(service)
    with slurm_errors():
        records = serving.status(deployment, rt.slurm())
    emit(as_json, "replicas", records, COLUMNS, "")


@serve.command("stop")
@click.argument("service")
@json_option
@pass_runtime
def stop(rt: Runtime, service: str, as_json: bool) -> None:
    """Stop SERVICE's follower, cancel its replicas and stop its router; its logs stay."""
    deployment = _deployment(service)
    with slurm_errors():
        done = serving.stop(deployment, rt.slurm())
    if as_json:
        echo_json(document(stopped=done))
    else:
        for line in done:
            click.echo(line)
