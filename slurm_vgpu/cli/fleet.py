"""``slurm-vgpu fleet doctor|status HOSTLIST``: run ``doctor`` / ``gpus`` on many nodes over SSH at once.

Each host runs its own ``slurm-vgpu ... --json`` (fabric's ThreadingGroup, one thread per host) and
the answers are summarised one line per host. SSH settings (user, port, keys, jump hosts) come from
the SSH config, as for ssh(1); ``--ssh-config`` names another file.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException

from .output import Column, document, echo_json, echo_table, json_option
from .runtime import hostnames

NODE_ENV = "SLURM_VGPU_FLEET_NODE"  # the host's name as given on our command line, for --node


@dataclass(frozen=True)
class FleetOptions:
    ssh_config: Path | None
    user: str | None
    remote_command: str
    connect_timeout: float


def run_everywhere(hosts: list[str], arguments: str, options: FleetOptions) -> list[dict]:
    """``<remote command> <arguments>`` on every host in parallel: one record per host, in order.

    Each host finds its name, as given here, in $SLURM_VGPU_FLEET_NODE (fabric sends it inline).
    fabric keys results by user, address and port: names that resolve to the same ones count once.
    """
    ssh_config = str(options.ssh_config) if options.ssh_config else None
    connections = [
        Connection(host, user=options.user, connect_timeout=options.connect_timeout, inline_ssh_env=True,
                   config=Config(runtime_ssh_path=ssh_config, overrides={"run": {"env": {NODE_ENV: host}}}))
        for host in hosts
    ]
    group = ThreadingGroup.from_connections(connections)
    try:
        results = _run(group, f"{options.remote_command} {arguments}")
    finally:
        group.close()
    return [_record(c.original_host, results[c]) for c in connections]


def _run(group: ThreadingGroup, command: str):
    try:
        return group.run(command, hide=True, warn=True, in_stream=False)
    except GroupException as exc:  # some hosts could not be reached; the others' results are in it
        return exc.result


def _record(host: str, outcome) -> dict:
    if isinstance(outcome, BaseException):
        error = _last_line(outcome) or type(outcome).__name__
        return {"host": host, "reachable": False, "exit_status": None, "error": error, "report": None}
    try:
        report = json.loads(outcome.stdout)
        error = None
    except ValueError:
        report, error = None, _last_line(outcome.stderr) or "the remote command printed no JSON"
    return {"host": host, "reachable": True, "exit_status": outcome.exited, "error": error, "report": report}


def _last_line(text: object) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def doctor_status(record: dict) -> str:
    """Worst check status of a host; UNREACHABLE or ERROR when there is no report to read."""
    if not record["reachable"]:
        return "UNREACHABLE"
    if record["report"] is None:
        return "ERROR"
    statuses = {c["status"] for c in record["report"]["checks"]}
    return next((s for s in ("FAIL", "WARN") if s in statuses), "OK")


def doctor_problems(record: dict) -> str:
    if record["report"] is None:
        return record["error"]
    return "; ".join(f"{c['name']}: {c['message']}" for c in record["report"]["checks"] if c["status"] != "OK")


def status_status(record: dict) -> str:
    if not record["reachable"]:
        return "UNREACHABLE"
    if record["report"] is None or record["exit_status"] != 0:
        return "ERROR"
    gpus = record["report"]["gpus"]
    if not gpus:
        return "NO GPUS"
    return "OK" if all(g["state"] == "up" and not g["unavailable_reason"] for g in gpus) else "DEGRADED"


def _gpus(record: dict) -> list[dict]:
    return record["report"]["gpus"] if record["report"] and "gpus" in record["report"] else []


DOCTOR_COLUMNS = (
    Column("HOST", lambda r: r["host"]),
    Column("RESULT", lambda r: r["status"]),
    Column("PROBLEMS", doctor_problems, wrap=True),
)

STATUS_COLUMNS = (
    Column("HOST", lambda r: r["host"]),
    Column("RESULT", lambda r: r["status"]),
    Column("GPUS", lambda r: len(_gpus(r)), "right"),
    Column("UP", lambda r: sum(g["state"] == "up" for g in _gpus(r)), "right"),
    Column("NOT PLACEABLE", lambda r: sum(bool(g["unavailable_reason"]) for g in _gpus(r)), "right"),
    Column("SHARE", lambda r: f"{sum(g['share_used'] for g in _gpus(r))}/{100 * len(_gpus(r))}", "right"),
    Column("ERROR", lambda r: r["error"], wrap=True),
)


@click.group()
@click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="SSH config file to read instead of ~/.ssh/config (host aliases, ports, keys).")
@click.option("--user", "-l", help="Remote user (default: from the SSH config, else yours).")
@click.option("--remote-command", default="slurm-vgpu", show_default=True,
              help="How to run slurm-vgpu on the hosts, e.g. '/opt/slurm-vgpu/bin/slurm-vgpu --config /etc/x.conf'.")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds per SSH connection.")
@click.pass_context
def fleet(ctx: click.Context, ssh_config: Path | None, user: str | None, remote_command: str,
          connect_timeout: float) -> None:
    """Run doctor or status on many nodes over SSH, in parallel; exit 1 if any host is not OK."""
    ctx.obj = FleetOptions(ssh_config, user, remote_command, connect_timeout)


def _fleet_command(name: str, arguments: str, status: Callable[[dict], str], columns: tuple[Column, ...],
                   help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("hostlist")
    @json_option
    @click.pass_obj
    def command(options: FleetOptions, hostlist: str, as_json: bool) -> None:
        records = run_everywhere(hostnames(hostlist, "HOSTLIST"), arguments, options)
        for record in records:
            record["status"] = status(record)
        if as_json:
            echo_json(document(hosts=records))
        else:
            echo_table(columns, records)
        if any(r["status"] != "OK" for r in records):
            raise SystemExit(1)

    return command


fleet.add_command(_fleet_command(
    "doctor", "doctor --json", doctor_status, DOCTOR_COLUMNS,
    "Run 'slurm-vgpu doctor' on every host of HOSTLIST (gpu[01-08]); one line per host with what failed.",
))
fleet.add_command(_fleet_command(
    "status", f'gpus --json --node "${NODE_ENV}"', status_status, STATUS_COLUMNS,
    "Run 'slurm-vgpu gpus --node HOST' on every host of HOSTLIST: can each reach the database, and "
    "how are its GPUs.",
))
