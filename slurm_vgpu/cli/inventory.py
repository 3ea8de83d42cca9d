"""``slurm-vgpu gpus`` and ``slurm-vgpu nodes``: the heterogeneous inventory and how full it is."""
from __future__ import annotations

import click

from .output import Column, ago, emit, gib, json_option
from ..db.records import gpu_records, node_records
from .runtime import Runtime, hostnames, pass_runtime

node_option = click.option("--node", "-n", "node_list", metavar="HOSTLIST",
                           help="Only these nodes, as a Slurm hostlist (gpu[01-08]).")


def mps_users(record: dict) -> str:
    return ",".join(f"{u['name'] or '?'}({u['uid']})" for u in record["mps_users"])


GPU_COLUMNS = (
    Column("NODE", lambda g: g["node"]),
    Column("IDX", lambda g: g["index"], "right"),
    Column("GRES TYPE", lambda g: g["gres_type"]),
    Column("MODEL", lambda g: g["model"]),
    Column("STATE", lambda g: "up*" if g["state"] == "up" and g["unavailable_reason"] else g["state"]),
    Column("SHARE", lambda g: f"{g['share_used']}/100", "right"),
    Column("MEMORY", lambda g: f"{gib(g['memory_placed_mib'])}/{gib(g['memory_mib'])}", "right"),
    Column("SLICES", lambda g: g["slices"], "right"),
    Column("MPS USER", mps_users),
    Column("REASON", lambda g: g["unavailable_reason"], wrap=True),
    Column("UUID", lambda g: g["uuid"]),
)

NODE_COLUMNS = (
    Column("NODE", lambda n: n["name"]),
    Column("STATE", lambda n: n["state"]),
    Column("HEARTBEAT", lambda n: ago(n["heartbeat_age_s"]), "right"),
    Column("GPUS", lambda n: " ".join(f"{count}x{model}" for model, count in n["models"].items())),
    Column("UP/DRAIN/DOWN", lambda n: f"{n['gpus_up']}/{n['gpus_draining']}/{n['gpus_down']}", "right"),
    Column("SHARE", lambda n: f"{n['share_used']}/{n['share_total']}", "right"),
    Column("MEMORY", lambda n: f"{gib(n['memory_placed_mib'])}/{gib(n['memory_mib'])}", "right"),
    Column("AGENT", lambda n: n["agent_version"]),
    Column("REASON", lambda n: n["reason"], wrap=True),
)


@click.command()
@node_option
@click.option("--state", "states", multiple=True, type=click.Choice(["up", "draining", "down"]),
              help="Only GPUs in this state (repeatable).")
@json_option
@pass_runtime
def gpus(runtime: Runtime, node_list: str | None, states: tuple[str, ...], as_json: bool) -> None:
    """GPUs: model, share and memory placed, MPS user, state. STATE up* means up but not placeable
    (its node's agent is silent); REASON says why."""
    with runtime.session() as session:
        records = gpu_records(session, runtime.config.heartbeat_timeout, hostnames(node_list))
    records = [g for g in records if not states or g["state"] in states]
    emit(as_json, "gpus", records, GPU_COLUMNS, "no GPUs registered (does the node agent run?)")


@click.command()
@node_option
@json_option
@pass_runtime
def nodes(runtime: Runtime, node_list: str | None, as_json: bool) -> None:
    """Nodes: their agent's heartbeat, GPU models and how full they are."""
    with runtime.session() as session:
        records = node_records(session, runtime.config.heartbeat_timeout, hostnames(node_list))
    emit(as_json, "nodes", records, NODE_COLUMNS, "no nodes registered (does the node agent run?)")
