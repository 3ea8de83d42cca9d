"""The prolog.d/epilog.d wrapper scripts slurmd runs; Slurm scrubs the environment, so the wrapper
names the interpreter and the configuration file explicitly."""
from __future__ import annotations

from pathlib import Path


def hook_script(hook: str, python: str, config: Path) -> str:
    if hook not in ("prolog", "epilog"):
        raise ValueError(f"unknown hook {hook!r}; expected prolog or epilog")
    return (
        "#!/bin/sh\n"
        f"# slurm-vgpu {hook}: run by slurmd as root; logs to syslog.\n"
        f"exec {python} -m slurm_vgpu.node {hook} --config {config}\n"
    )
