"""``slurm-vgpu placements`` (Postgres: which slice is on which GPU) and ``slurm-vgpu jobs`` (Slurm's
vgpu jobs, waiting or running, each with its placement)."""
from __future__ import annotations

import pwd
from datetime import datetime, timezone

import click

from ..db.models import PLACEMENT_STATES
from .inventory import node_option
from .output import Column, emit, gib, json_option
from ..db.records import placement_records
from .runtime import Runtime, hostnames, pass_runtime, slurm_errors

PLACEMENT_COLUMNS = (
    Column("JOBID", lambda p: p["job_id"], "right"),
    Column("USER", lambda p: p["user"] or p["uid"]),
    Column("NODE", lambda p: p["node"]),
    Column("GPU", lambda p: f"{p['gpu_index']} ({p['gres_type']})"),
    Column("SHARE", lambda p: "whole" if p["whole"] else p["share"], "right"),
    Column("MEMORY", lambda p: gib(p["memory_mib"]), "right"),
    Column("CLASS", lambda p: p["slo_class"]),
    Column("STATE", lambda p: p["state"]),
    Column("PLACED", lambda p: p["placed_at"]),
    Column("STARTED", lambda p: p["started_at"]),
    Column("ENDED", lambda p: p["ended_at"]),
    Column("REASON", lambda p: p["reason"], wrap=True),
)

JOB_COLUMNS = (
    Column("JOBID", lambda j: j["job_id"], "right"),
    Column("USER", lambda j: j["user_name"] or j["user_id"]),
    Column("SLURM", lambda j: j["slurm_state"]),
    Column("VGPU", lambda j: j["vgpu_state"]),
    Column("SHARE", lambda j: j["share"], "right"),
    Column("CLASS", lambda j: j["slo_class"]),
    Column("MEMORY", lambda j: gib(j["memory_mib"]), "right"),
    Column("MODEL", lambda j: j["model"]),
    Column("NODE", lambda j: j["placement"] and j["placement"]["node"]),
    Column("GPU", lambda j: j["placement"] and f"{j['placement']['gpu_index']} ({j['placement']['gres_type']})"),
    Column("SUBMITTED", lambda j: j["submit_time"]),
    Column("WAITS BECAUSE", lambda j: j["wait"], wrap=True),
)


def job_ids_option(f):
    return click.option("--job", "-j", "job_list", metavar="JOBID[,JOBID...]",
                        help="Only these jobs.")(f)


def user_option(f):
    return click.option("--user", "-u", "user_list", metavar="USER[,USER...]",
                        help="Only these users (names or uids).")(f)


def parse_job_ids(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: job ids are numbers, e.g. 1234,1240", param_hint="--job") from None


def parse_uids(value: str | None) -> list[int] | None:
    """Names or uids, as squeue --user takes them; an unknown name is bad input."""
    if not value:
        return None
    uids = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        if item.isdigit():
            uids.append(int(item))
            continue
        try:
            uids.append(pwd.getpwnam(item).pw_uid)
        except KeyError:
            raise click.BadParameter(f"no user {item!r} on this host; give the uid instead",
                                     param_hint="--user") from None
    return uids


@click.command()
@node_option
@job_ids_option
@user_option
@click.option("--state", "states", multiple=True, type=click.Choice(PLACEMENT_STATES),
              help="Only placements in this state (repeatable). Default: the active ones.")
@click.option("--all", "-a", "show_all", is_flag=True, help="Include released and failed placements.")
@json_option
@pass_runtime
def placements(runtime: Runtime, node_list: str | None, job_list: str | None, user_list: str | None,
               states: tuple[str, ...], show_all: bool, as_json: bool) -> None:
    """Slices on GPUs, newest first: job, user, GPU, share, memory, class, state and times."""
    with runtime.session() as session:
        records = placement_records(
            session, active_only=not show_all, nodes=hostnames(node_list), job_ids=parse_job_ids(job_list),
            uids=parse_uids(user_list), states=states,
        )
    emit(as_json, "placements", records, PLACEMENT_COLUMNS, "no placements match")


@click.command()
@node_option
@job_ids_option
@user_option
@json_option
@pass_runtime
def jobs(runtime: Runtime, node_list: str | None, job_list: str | None, user_list: str | None,
         as_json: bool) -> None:
    """Slurm's vgpu jobs, waiting or running, with their placement and why they wait."""
    with slurm_errors():
        slurm_jobs = runtime.slurm().vgpu_jobs()
    wanted_jobs, wanted_uids, wanted_nodes = parse_job_ids(job_list), parse_uids(user_list), hostnames(node_list)
    with runtime.session() as session:
        placed = {p["job_id"]: p for p in placement_records(session, job_ids=[j.job_id for j in slurm_jobs])}
    records = [job_record(job, placed.get(job.job_id)) for job in slurm_jobs]
    records = [
        r for r in records
        if (not wanted_jobs or r["job_id"] in wanted_jobs)
        and (not wanted_uids or r["user_id"] in wanted_uids)
        and (wanted_nodes is None or (r["placement"] and r["placement"]["node"] in wanted_nodes))
    ]
    emit(as_json, "jobs", records, JOB_COLUMNS, "no vgpu jobs in Slurm's queue")


def job_record(job, placement: dict | None) -> dict:
    request = job.request
    return {
        "job_id": job.job_id,
        "user_id": job.user_id,
        "user_name": job.user_name,
        "slurm_state": job.state,
        "submit_time": datetime.fromtimestamp(job.submit_time, timezone.utc) if job.submit_time else None,
        "vgpu_state": request.state,
        "share": request.share,
        "slo_class": request.slo_class,
        "memory_mib": request.memory_mib,
        "model": request.model,
        "wait": request.wait,
        "placement": placement,
    }
