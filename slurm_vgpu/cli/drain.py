"""``slurm-vgpu drain`` and ``slurm-vgpu resume``: take GPUs out of placement and put them back.

A drained GPU keeps its running slices (they finish or, with ``--requeue``, move now) and takes no
new ones: the capacity guard in Postgres refuses a new placement on any GPU that is not ``up``, so
a placement daemon that read the inventory before the drain still cannot land a slice there.
"""
from __future__ import annotations

import getpass

import click
import sqlalchemy as sa

from ..adapters.slurm import SlurmError
from ..contract import UNPLACED, VgpuRequest
from ..db import store
from ..db.models import ACTIVE_STATES, Gpu, Placement
from ..hostlist import HostlistError, expand
from ..db.records import gpu_records, placement_records
from .runtime import Runtime, pass_runtime, slurm_errors

TARGET_HELP = ("GPU as UUID, NODE:INDEX or NODE:GRES_TYPE (node1:0, node1:h100_0), or whole nodes as a "
               "Slurm hostlist (gpu[01-04]); NODE may be a hostlist too (gpu[01-04]:0).")


class TargetError(ValueError):
    pass


def resolve_targets(targets: tuple[str, ...], gpus: list[dict]) -> list[dict]:
    """The GPU records the admin named, in inventory order; every name must match something."""
    chosen: set[str] = set()
    for target in targets:
        matches = _matches(target, gpus)
        if not matches:
            raise TargetError(f"no GPU matches {target!r}; list them with: slurm-vgpu gpus")
        chosen.update(g["uuid"] for g in matches)
    return [g for g in gpus if g["uuid"] in chosen]


def _matches(target: str, gpus: list[dict]) -> list[dict]:
    by_uuid = [g for g in gpus if g["uuid"] == target]
    if by_uuid:
        return by_uuid
    node_part, sep, selector = target.partition(":")
    try:
        names = set(expand(node_part))
    except HostlistError as exc:
        raise TargetError(str(exc)) from exc
    on_nodes = [g for g in gpus if g["node"] in names]
    if not sep:
        return on_nodes
    return [g for g in on_nodes if str(g["index"]) == selector or g["gres_type"] == selector]


def _label(gpu: dict) -> str:
    return f"{gpu['node']}:{gpu['index']} ({gpu['gres_type']})"


def _selected(runtime: Runtime, session, targets: tuple[str, ...]) -> list[dict]:
    try:
        return resolve_targets(targets, gpu_records(session, runtime.config.heartbeat_timeout))
    except TargetError as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from exc


def _set_state(session, gpus: list[dict], state: str, reason: str | None, kind: str, message: str,
               details: dict) -> None:
    uuids = [g["uuid"] for g in gpus]
    session.execute(sa.update(Gpu).where(Gpu.uuid.in_(uuids)).values(state=state, state_reason=reason))
    for gpu in gpus:
        store.log_event(session, kind, message, gpu_uuid=gpu["uuid"], node=gpu["node"], details=details)


@click.command(help="Stop placing slices on GPUs. TARGET: " + TARGET_HELP)
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@click.option("--reason", required=True, help="Why, for the record and for users of its slices (like scontrol's Reason=).")
@click.option("--requeue", is_flag=True,
              help="Move its slices now: requeue their jobs in Slurm (held, to be placed elsewhere) and "
                   "mark their placements failed. Without it they run to the end.")
@pass_runtime
def drain(runtime: Runtime, targets: tuple[str, ...], reason: str, requeue: bool) -> None:
    who = getpass.getuser()
    with runtime.session() as session:
        gpus = _selected(runtime, session, targets)
        _set_state(session, gpus, "draining", reason, "gpu-drain", f"drained by {who}: {reason}",
                   {"reason": reason, "by": who, "requeue": requeue})
    for gpu in gpus:
        click.echo(f"drained {_label(gpu)}: {gpu['slices']} slice(s) on it", err=True)
    if requeue:
        _requeue_slices(runtime, gpus, reason, who)


def _requeue_slices(runtime: Runtime, gpus: list[dict], reason: str, who: str) -> None:
    """Requeue each active slice's job, then end its placement; a job Slurm refuses keeps its placement."""
    labels = {g["uuid"]: _label(g) for g in gpus}
    with runtime.session() as session:
        slices = [p for p in placement_records(session) if p["gpu_uuid"] in labels]
    if not slices:
        return
    slurm = runtime.slurm()
    with slurm_errors():
        jobs = {j.job_id: j for j in slurm.jobs()}
    failures = []
    for p in slices:
        why = f"GPU {labels[p['gpu_uuid']]} drained: {reason}"
        job = jobs.get(p["job_id"])
        try:
            if job is not None:
                slurm.send_back(job, VgpuRequest(state=UNPLACED, share=p["requested_share"], slo_class=p["slo_class"],
                                                 memory_mib=p["memory_mib"]), why)
        except SlurmError as exc:
            failures.append(f"job {p['job_id']}: {exc}")
            continue
        with runtime.session() as session:
            placement = session.get(Placement, p["id"], with_for_update=True)
            if placement.state in ACTIVE_STATES:
                store.end_placement(session, placement, "failed", f"requeued by {who}: {why}")
        click.echo(f"requeued job {p['job_id']} from {labels[p['gpu_uuid']]}", err=True)
    if failures:
        raise click.ClickException(
            "Slurm refused to requeue: " + "; ".join(failures)
            + ". Their placements stay active; retry the drain with --requeue or scancel the jobs."
        )


@click.command(help="Let the placement use drained or down GPUs again. TARGET: " + TARGET_HELP)
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@click.option("--reason", default="resumed", show_default=True, help="Recorded in the event log.")
@pass_runtime
def resume(runtime: Runtime, targets: tuple[str, ...], reason: str) -> None:
    who = getpass.getuser()
    with runtime.session() as session:
        gpus = _selected(runtime, session, targets)
        _set_state(session, gpus, "up", None, "gpu-resume", f"resumed by {who}: {reason}",
                   {"reason": reason, "by": who})
    for gpu in gpus:
        click.echo(f"resumed {_label(gpu)}", err=True)
