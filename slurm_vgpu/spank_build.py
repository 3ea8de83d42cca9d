"""Building the SPANK plugin from the sources the package carries, against one Slurm's headers.

slurmd refuses a plugin built for another Slurm release, so the plugin is built on (or for) each
node's Slurm. The sources are copied into a build directory first: the package itself may be a
read-only install, and two Slurm releases' builds must not share object files. ``contract.h`` is
rendered afresh from :mod:`slurm_vgpu.contract`, so the plugin always speaks the package's contract.
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from .render import contract_header
from .resources import SPANK

PLUGIN = "slurm_vgpu.so"


class SpankBuildError(RuntimeError):
    pass


def build_plugin(build_dir: Path, slurm_include: str = "/usr/include", run: Sequence[str] = ()) -> Path:
    """Copy the sources into ``build_dir`` and ``make`` there (incremental: unchanged sources keep
    their objects); returns the built plugin. ``run`` prefixes the make command (a root filesystem
    of another Slurm release, say)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = {s.name: s.read_bytes() for s in SPANK.iterdir()
               if s.suffix in (".c", ".h", ".map") or s.name == "Makefile"}
    sources["contract.h"] = contract_header().encode()
    for name, text in sources.items():
        target = build_dir / name
        if not target.exists() or target.read_bytes() != text:
            target.write_bytes(text)
    result = subprocess.run([*run, "make", "-s", "-C", str(build_dir), f"SLURM_INCLUDE={slurm_include}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SpankBuildError(f"building the SPANK plugin in {build_dir} failed (is {slurm_include}/slurm/spank.h, "
                              f"from libslurm-dev or slurm-devel, installed?):\n"
                              f"{(result.stderr or result.stdout).strip()}")
    return build_dir / PLUGIN
