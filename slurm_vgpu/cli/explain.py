"""``slurm-vgpu explain JOBID``: why a vgpu job waits, GPU by GPU, in words its user understands.

The verdict is what the placement daemon would decide: the same GPU states (``store.gpu_states``),
the same node CPUs and memory (``node_states``), the same request (``waiting_requests``), the same
typical requests (recent placements) and the same pure policy (``place_slices``). The per-GPU
lines apply the policy's own rules (``GPU_RULES``) to one GPU at a time and name the first it fails.
"""
from __future__ import annotations

from collections.abc import Callable

import click

from ..adapters.slurm import Job
from ..db import store
from ..placement.cycle import REFUSAL_MEMORY, node_states, policy_config, typical_workload, waiting_requests
from ..policy import GpuState, NodeState, PlacementResult, Request, place_slices
from ..policy.rules import GPU_RULES, Ask
from ..policy.units import reference_speed
from .output import Column, document, echo_json, echo_table, gib, json_option
from .placements import job_record
from ..db.records import gpu_records, placement_records, user_name
from .runtime import Runtime, pass_runtime, slurm_errors


def _users(record: dict) -> str:
    return ",".join(u["name"] or str(u["uid"]) for u in record["mps_users"])


# What each policy rule means for one GPU, keyed by the rule's name: (record, state, ask) -> words.
WHY_NOT: dict[str, Callable[[dict, GpuState, Ask], str]] = {
    "model": lambda g, s, a: f"is {g['model']}; the job asks for {'|'.join(sorted(a.request.models))}",
    "memory-size": lambda g, s, a: f"has {gib(g['memory_mib'])} in all; the job asks {gib(a.request.memory_mib)}",
    "share-size": lambda g, s, a: f"the share converts to {a.units(s)} units here, more than one GPU",
    "available": lambda g, s, a: f"takes no new slices ({g['unavailable_reason']})",
    "share-free": lambda g, s, a: f"{g['share_free']}% free; the job needs {a.units(s)}%",
    "memory-free": lambda g, s, a: (f"{gib(g['memory_mib'] - g['memory_placed_mib'])} memory free; "
                                    f"the job needs {gib(a.request.memory_mib)}"),
    "clients": lambda g, s, a: f"holds {g['slices']} slices, the most its MPS server takes ({g['max_clients']})",
    "user": lambda g, s, a: (f"runs {_users(g)}'s MPS server; one Unix user per GPU "
                             "(MPS would queue a second user's work until the first one's ends)"),
    "memory-cap": lambda g, s, a: (
        "holds another user's capped slices; a slice without --vgpu-mem may use all of the GPU's memory"
        if a.request.memory_mib is None else
        "holds another user's slice without a memory cap, which may use all of the GPU's memory"),
    "latency": lambda g, s, a: (f"holds {g['slices']} slices ({', '.join(g['slo_classes'])}); a latency "
                                f"slice allows at most {a.config.latency_max_cotenants} others beside it"),
}


def why_not(record: dict, state: GpuState, ask: Ask) -> tuple[str | None, str]:
    """The first policy rule this GPU fails (its name and what it means here), or (None, 'fits now')."""
    for rule in GPU_RULES:
        if not rule.passes(state, ask):
            words = WHY_NOT.get(rule.name)
            return rule.name, words(record, state, ask) if words else f"fails the policy's {rule.name} rule"
    return None, "fits now"


def node_short(node: NodeState | None, req: Request) -> str | None:
    """What a GPU that passes every rule lacks on its node (CPUs, memory), in words; None: nothing."""
    if node is None:
        return None
    if node.cpu_milli_free is not None and req.cpu_milli > node.cpu_milli_free:
        return f"its node has {node.cpu_milli_free / 1000:g} CPUs free; the job needs {req.cpu_milli / 1000:g}"
    if node.memory_mib_free is not None and req.node_memory_mib > node.memory_mib_free:
        return f"its node has {gib(node.memory_mib_free)} of memory free; the job needs {gib(req.node_memory_mib)}"
    return None


GPU_COLUMNS = (
    Column("NODE", lambda g: g["node"]),
    Column("IDX", lambda g: g["index"], "right"),
    Column("MODEL", lambda g: g["model"]),
    Column("FREE", lambda g: f"{g['share_free']}%", "right"),
    Column("MEM FREE", lambda g: gib(g["memory_mib"] - g["memory_placed_mib"]), "right"),
    Column("MPS USER", _users),
    Column("CLASSES", lambda g: ",".join(g["slo_classes"])),
    Column("RULE", lambda g: g["rule"]),
    Column("WHY NOT", lambda g: g["why"], wrap=True),
)


@click.command()
@click.argument("job_id", type=int)
@json_option
@pass_runtime
def explain(runtime: Runtime, job_id: int, as_json: bool) -> None:
    """Why job JOB_ID waits for a GPU slice, GPU by GPU. Exit 1 when the job is unknown or not a vgpu job."""
    with slurm_errors():
        slurm = runtime.slurm()
        jobs = {j.job_id: j for j in slurm.jobs()}
        nodes = slurm.nodes()
        reservations = slurm.reservations()
    job = jobs.get(job_id)
    if job is None:
        raise click.ClickException(f"job {job_id} is not in Slurm's queue (squeue --json --all); it may "
                                   "have ended longer ago than MinJobAge: see sacct -j")
    if job.request is None:
        raise click.ClickException(f"job {job_id} asked for no vgpu slice (no vgpu-state in its "
                                   "AdminComment); submit with --gres=vgpu:N")
    with runtime.session() as session:
        records = gpu_records(session, runtime.config.heartbeat_timeout)
        states = store.gpu_states(session, runtime.config.heartbeat_timeout)
        placement = next(iter(placement_records(session, job_ids=[job_id])), None)
        now, gpu_nodes = store.now(), {s.node for s in states}
        refused = store.refused_nodes(session, {job.job_id: job.submit_time}, now - REFUSAL_MEMORY)
        requests, shut_out = ([], []) if placement else waiting_requests(
            [job], set(), now.timestamp(), refused, nodes, gpu_nodes, reservations=reservations)
        workload = typical_workload(session, requests)
        room = node_states(nodes, gpu_nodes, jobs, store.pinned_nodes(session))
    if requests:
        config = policy_config(runtime.config)
        ask = Ask(requests[0], config, reference_speed(states, config))
        by_uuid = {s.uuid: s for s in states}
        room_of = {n.name: n for n in room}
        for record in records:
            record["rule"], record["why"] = why_not(record, by_uuid[record["uuid"]], ask)
            short = record["rule"] is None and node_short(room_of.get(record["node"]), ask.request)
            if short:
                record["rule"], record["why"] = "node", short
        verdict = _waiting_verdict(place_slices(states, requests, config, room, workload=[(r, 1.0) for r in workload]),
                                   records)
    elif shut_out:
        records = []
        verdict = _waiting_verdict(PlacementResult(blocked=tuple(shut_out)), records)
    else:
        records = []
        verdict = _not_waiting_verdict(job, placement)
    if as_json:
        echo_json(document(job=job_record(job, placement), verdict=verdict, gpus=records))
        return
    click.echo(_summary(job))
    click.echo(verdict["text"])
    if records:
        echo_table(GPU_COLUMNS, records)


def _summary(job: Job) -> str:
    req = job.request
    parts = [f"vgpu:{req.model + ':' if req.model else ''}{req.share}", f"class {req.slo_class}"]
    if req.memory_mib:
        parts.append(f"{gib(req.memory_mib)} of GPU memory")
    who = f"{job.user_name or user_name(job.user_id) or '?'}, uid {job.user_id}"
    return f"Job {job.job_id} ({who}, {job.state}) asks for {', '.join(parts)}."


def _not_waiting_verdict(job: Job, placement: dict | None) -> dict:
    if placement is not None:
        text = (f"It is placed on {placement['node']} GPU {placement['gpu_index']} ({placement['gres_type']}): "
                f"placement {placement['state']} since {placement['placed_at']:%Y-%m-%d %H:%M:%S}.")
    else:
        text = (f"It does not wait for a GPU: Slurm state {job.state}, vgpu state {job.request.state}"
                + (f" ({job.request.wait})." if job.request.wait else "."))
    return {"placed": placement is not None, "placeable": None, "never": False,
            "reason": job.request.wait, "text": text}


def _waiting_verdict(result: PlacementResult, records: list[dict]) -> dict:
    if result.decisions:
        where = next(g for g in records if g["uuid"] == result.decisions[0].gpu_uuids[0])
        return {
            "placed": False, "placeable": True, "never": False, "reason": None,
            "text": (f"It fits now on {where['node']} GPU {where['index']} ({where['gres_type']}); the "
                     "placement daemon places it on its next cycle. If it stays unplaced, check that the "
                     "daemon runs (slurm-vgpu placement) and its log."),
        }
    blocked = result.blocked[0]
    text = f"It waits: {blocked.reason}."
    if blocked.never:
        text = f"It can never run as asked: {blocked.reason}. Cancel it and resubmit with a request that fits."
    return {"placed": False, "placeable": False, "never": blocked.never, "reason": blocked.reason, "text": text}
