"""``slurm-vgpu``: the admin command line (the dev cluster has its own, ``slurm-vgpu-dev``).

Exit codes, as in the docs: 0 success, 1 the operation failed (the system said no, a check found a
problem), 2 bad usage or input (click's own convention).
"""
from __future__ import annotations

from pathlib import Path

import click

from .db import db
from .doctor import doctor
from .drain import drain, resume
from .explain import explain
from .fleet import fleet
from .inventory import gpus, nodes
from .placements import jobs, placements
from .profiles import profile, profiles
from .serve import serve
from .render_cmd import render_command
from .runtime import Runtime
from .services import agent, placement
from .simulate import simulate
from .spank import spank


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slurm-vgpu")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="slurm-vgpu.conf to read [env SLURM_VGPU_CONF; default /etc/slurm/slurm-vgpu.conf]. "
              "SLURM_VGPU_DATABASE_URL, when set, overrides its DatabaseUrl.")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Fractional, SLO-aware GPU sharing for Slurm through NVIDIA MPS slices."""
    ctx.obj = Runtime(config_path)


main.add_command(db)
main.add_command(placement)
main.add_command(agent)
main.add_command(gpus)
main.add_command(nodes)
main.add_command(placements)
main.add_command(jobs)
main.add_command(explain)
main.add_command(drain)
main.add_command(resume)
main.add_command(render_command)
main.add_command(doctor)
main.add_command(fleet)
main.add_command(simulate)
main.add_command(profile)
main.add_command(profiles)
main.add_command(serve)
main.add_command(spank)
