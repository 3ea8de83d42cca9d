"""``slurm-vgpu doctor``: check this node, one line per check; exit 1 when any check fails."""
from __future__ import annotations

import click

from ..doctor import FAIL, run_checks
from .output import document, echo_json, json_option
from .runtime import Runtime, pass_runtime


@click.command()
@json_option
@pass_runtime
def doctor(runtime: Runtime, as_json: bool) -> None:
    """Check Slurm (version, SPANK plugin, plugstack, prolog/epilog), MPS, the GPUs, the run
    directory and the database. Each line reads STATUS CHECK what-was-found [-> what to do]."""
    checks = run_checks(runtime.config, runtime.database_url)
    if as_json:
        echo_json(document(node=runtime.config.node, checks=[c.as_dict() for c in checks]))
    else:
        for check in checks:
            click.echo(f"{check.status:<4} {check.name:<9} {check.message}" + (f" -> {check.fix}" if check.fix else ""))
    if any(check.status == FAIL for check in checks):
        raise SystemExit(1)
