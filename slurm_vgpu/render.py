"""Renders the Slurm-side configuration from the jinja2 templates in ``slurm_templates/``, and the
SPANK plugin's ``contract.h``: both carry the facts of :mod:`slurm_vgpu.contract` into Lua and C.

One place, so the dev cluster, ``slurm-vgpu render`` and Ansible produce the same files.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import contract
from .adapters.gpus import GpuRecord
from .config import Config
from .resources import SLURM_TEMPLATES, SPANK


@dataclass(frozen=True)
class NodeSpec:
    """A Slurm node as the configs need it."""

    name: str
    gpus: tuple[GpuRecord, ...]
    cpus: int = 4
    memory_mib: int = 8192
    port: int | None = None  # per-node slurmd port (dev cluster only)
    address: str | None = None
    features: tuple[str, ...] = ()  # slurm.conf Features= (what --constraint selects)

    @property
    def gres(self) -> str:
        """``gpu:h100_0:1,vgpu:h100_0:100,...``: per GPU, a device-backed gpu record (so Slurm's
        device cgroup fences it) and a count-only typed vgpu record of 100."""
        return ",".join(f"gpu:{g.gres_type}:1,vgpu:{g.gres_type}:100" for g in self.gpus)


def string_literal(text: str) -> str:
    """A string as Lua and C both write it (ASCII only: neither reads JSON's \\u escapes)."""
    if not text.isascii():
        raise ValueError(f"{text!r}: only ASCII goes into the generated Lua and C")
    return json.dumps(text)


def environment(*first: Path) -> jinja2.Environment:
    """The templates of ``first`` (directories), then the package's Slurm templates; the filters
    ``lua`` and ``c`` write a string literal."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in (*first, SLURM_TEMPLATES)]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["lua"] = env.filters["c"] = string_literal
    env.globals["contract"] = contract
    return env


_env = environment()


def render(template: str, **context) -> str:
    return _env.get_template(template).render(**context)


DEFAULT_DEVICE_DIR = "/dev"  # where the NVIDIA driver makes /dev/nvidia<minor>


def gres_conf(nodes: Iterable[NodeSpec], device_dir: str = DEFAULT_DEVICE_DIR) -> str:
    return render("gres.conf.j2", nodes=list(nodes), device_dir=device_dir)


def job_submit_lua(nodes: Iterable[NodeSpec], operator_uids: Iterable[int] = Config.operator_uids,
                   default_class: str = Config.default_class) -> str:
    """job_submit.lua knows the cluster's GPU models and largest memory, so it can refuse at submit."""
    gpus = [g for n in nodes for g in n.gpus]
    return render(
        "job_submit.lua.j2",
        models=sorted({g.model for g in gpus}),
        largest_memory_mib=max((g.memory_mib for g in gpus), default=0),
        operator_uids=sorted(set(operator_uids)),
        default_class=default_class,
    )


CONTRACT_HEADER = SPANK / "contract.h"  # committed; a unit test holds it to contract.h.j2's output


def contract_header() -> str:
    """``spank/contract.h``: the facts the SPANK plugin shares with the rest, as C macros."""
    return environment(SPANK).get_template("contract.h.j2").render()


# Where a site install puts our pieces; ``slurm-vgpu render`` and ``doctor`` take these as defaults.
DEFAULT_PLUGSTACK_CONF = "/etc/slurm/plugstack.conf"
DEFAULT_SPANK_PLUGIN = "/usr/local/lib/slurm/slurm_vgpu.so"  # where `slurm-vgpu spank build --install` puts it
DEFAULT_PROLOG = "/usr/local/libexec/slurm-vgpu/prolog"
DEFAULT_EPILOG = "/usr/local/libexec/slurm-vgpu/epilog"


@dataclass(frozen=True)
class SiteSettings:
    """The site-specific paths and policy the rendered Slurm files name."""

    plugstack_conf: str = DEFAULT_PLUGSTACK_CONF
    spank_plugin: str = DEFAULT_SPANK_PLUGIN
    spank_args: str = ""
    prolog: str = DEFAULT_PROLOG
    epilog: str = DEFAULT_EPILOG
    operator_uids: tuple[int, ...] = Config.operator_uids
    default_class: str = Config.default_class
    device_dir: str = DEFAULT_DEVICE_DIR


# File name (relative to the output directory) -> what it is, for --help and the admin guide.
SITE_FILES = {
    "gres.conf": "per GPU, a device-backed gpu record (fencing) and a typed vgpu record of 100",
    "vgpu-slurm.conf": "slurm.conf additions: GresTypes, job_submit, plugstack, prolog/epilog, Gres= per node",
    "plugstack.conf.d/slurm-vgpu.conf": "the SPANK plugin's plugstack entry",
    "job_submit.lua": "records and holds vgpu jobs at submit",
}


def site_files(nodes: Iterable[NodeSpec], settings: SiteSettings = SiteSettings()) -> dict[str, str]:
    """Every file of :data:`SITE_FILES`, rendered for these nodes (a node's CPUs and RealMemory are
    left out when unknown, so the lines merge into the site's own NodeName lines)."""
    nodes = list(nodes)
    return {
        "gres.conf": gres_conf(nodes, settings.device_dir),
        "vgpu-slurm.conf": render("vgpu-slurm.conf.j2", nodes=nodes, plugstack_conf=settings.plugstack_conf,
                                  prolog=settings.prolog, epilog=settings.epilog),
        "plugstack.conf.d/slurm-vgpu.conf": render("plugstack.conf.j2", spank_plugin=settings.spank_plugin,
                                                   spank_args=settings.spank_args),
        "job_submit.lua": job_submit_lua(nodes, settings.operator_uids, settings.default_class),
    }
