"""``slurm-vgpu spank``: the SPANK plugin, built from the sources the package carries."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from ..render import DEFAULT_SPANK_PLUGIN
from ..spank_build import SpankBuildError, build_plugin


@click.group()
def spank() -> None:
    """Build and install the SPANK plugin (--vgpu-class, --vgpu-mem; each task's slice)."""


@spank.command("build")
@click.option("--build-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the sources are copied and compiled (kept: later builds are incremental).")
@click.option("--slurm-include", default="/usr/include", show_default=True,
              help="The headers of the Slurm the nodes run (libslurm-dev, slurm-devel): slurmd refuses a "
              "plugin built for another release.")
@click.option("--install", "install_path", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Then install the plugin here (atomically, mode 0755), e.g. {DEFAULT_SPANK_PLUGIN}.")
def build(build_dir: Path, slurm_include: str, install_path: Path | None) -> None:
    """Compile the plugin; print its path (or the installed one)."""
    try:
        built = build_plugin(build_dir, slurm_include)
    except SpankBuildError as exc:
        raise click.ClickException(str(exc)) from exc
    if install_path is None:
        click.echo(built)
        return
    install_path.parent.mkdir(parents=True, exist_ok=True)
    staging = install_path.with_name(install_path.name + ".new")
    shutil.copyfile(built, staging)
    staging.chmod(0o755)
    os.replace(staging, install_path)
    click.echo(install_path)
