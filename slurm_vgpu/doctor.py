"""Is this node ready for vgpu jobs? One check per thing that must be right, each saying what to fix.

Checks only read: files, binaries, NVML and the database. They run on compute nodes (``slurm-vgpu
doctor``) and, over SSH, on a whole fleet (``slurm-vgpu fleet doctor``).
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from . import render
from .adapters import slurm
from .adapters.gpus import InventoryError, inventory_from
from .catalog import UNKNOWN_SPEED, speed_of
from .config import Config
from .db import engine as db

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SPANK_NAME = Path(render.DEFAULT_SPANK_PLUGIN).name


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    message: str
    fix: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Node:
    """What the Slurm checks share, read once."""

    slurm_conf: Path
    settings: dict[str, str] | None  # None when slurm.conf cannot be read
    slurmd_version: str | None

    @property
    def plugstack_conf(self) -> Path:
        return Path((self.settings or {}).get("plugstackconfig") or self.slurm_conf.parent / "plugstack.conf")


def run_checks(config: Config, database_url: URL) -> list[Check]:
    node = read_node(config)
    checks: list[Callable[[], Check]] = [
        lambda: check_slurm(node),
        lambda: check_plugstack(node),
        lambda: check_spank_plugin(node),
        lambda: check_prolog_epilog(node),
        lambda: check_preemption(config, node),
        lambda: check_mps(config),
        lambda: check_gpus(config),
        lambda: check_speeds(config),
        lambda: check_run_dir(config.run_dir),
        lambda: check_database(database_url),
    ]
    return [check() for check in checks]


def read_node(config: Config) -> Node:
    path = slurm.slurm_conf_path(config.slurm_conf)
    try:
        settings = slurm.read_slurm_conf(path)
    except OSError:
        settings = None
    return Node(path, settings, slurm.slurmd_version())


def check_slurm(node: Node) -> Check:
    if node.slurmd_version is None:
        return Check("slurm", FAIL, "slurmd is not installed (slurmd -V failed)", "install Slurm's slurmd on this node")
    if node.settings is None:
        return Check("slurm", FAIL, f"slurmd {node.slurmd_version}, but {node.slurm_conf} cannot be read",
                     "set SlurmConf= in slurm-vgpu.conf or SLURM_CONF to the slurm.conf slurmd uses")
    return Check("slurm", OK, f"slurmd {node.slurmd_version}, {node.slurm_conf}")


def _our_entries(node: Node) -> list[slurm.PlugstackEntry]:
    if node.settings is None:
        return []
    try:
        return [e for e in slurm.plugstack_entries(node.plugstack_conf) if Path(e.plugin).name == SPANK_NAME]
    except OSError:
        return []


def check_plugstack(node: Node) -> Check:
    fix = (f"slurm-vgpu render plugstack.conf.d/slurm-vgpu.conf --from-db -o {node.plugstack_conf.parent} and add "
           f"'include {node.plugstack_conf.parent}/plugstack.conf.d/*.conf' to {node.plugstack_conf}")
    if node.settings is None:
        return Check("plugstack", FAIL, "slurm.conf cannot be read, so neither can plugstack.conf", fix)
    entries = _our_entries(node)
    if not entries:
        return Check("plugstack", FAIL, f"no {SPANK_NAME} line in {node.plugstack_conf} or its includes", fix)
    entry = entries[0]
    line = f"{entry.kind} {entry.plugin} {entry.args}".strip()
    if entry.kind != "required":
        return Check("plugstack", WARN, f"'{line}' in {entry.source}: a broken plugin is skipped silently",
                     f"write 'required' instead of '{entry.kind}' so a broken install fails loudly")
    return Check("plugstack", OK, f"'{line}' in {entry.source}")


def check_spank_plugin(node: Node) -> Check:
    entries = _our_entries(node)
    plugin = Path(entries[0].plugin if entries else render.DEFAULT_SPANK_PLUGIN)
    if not plugin.is_absolute() and node.settings is not None:
        plugin = Path(node.settings.get("plugindir", "/usr/lib/slurm")) / plugin
    if not plugin.exists():
        return Check("spank", FAIL, f"SPANK plugin {plugin} is missing",
                     "build and install it against this Slurm: slurm-vgpu spank build --build-dir DIR --install PATH")
    built_for = spank_built_for(plugin)
    if built_for is None:
        return Check("spank", WARN, f"{plugin} exists but its Slurm version cannot be read (objdump missing?)",
                     "install binutils, or check that it was built against this Slurm's headers")
    if node.slurmd_version is None:
        return Check("spank", WARN, f"{plugin} built for Slurm {built_for}; slurmd is not installed to compare")
    if built_for.split(".")[:2] != node.slurmd_version.split(".")[:2]:
        return Check("spank", FAIL,
                      f"{plugin} was built for Slurm {built_for}, slurmd is {node.slurmd_version}: slurmd refuses it",
                      "rebuild against this Slurm's headers: slurm-vgpu spank build --build-dir DIR --install PATH")
    return Check("spank", OK, f"{plugin} built for Slurm {built_for}")


def spank_built_for(path: Path) -> str | None:
    """The Slurm version a plugin was compiled against: its ``plugin_version`` symbol holds
    SLURM_VERSION_NUMBER (major << 16 | minor << 8 | micro), which slurmd compares on load."""
    try:
        symbols = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, timeout=10).stdout
        match = re.search(r"^([0-9a-f]+)\s.*\splugin_version$", symbols, re.MULTILINE)
        if not match:
            return None
        start = int(match.group(1), 16)
        dump = subprocess.run(["objdump", "-s", f"--start-address={start:#x}", f"--stop-address={start + 4:#x}",
                               str(path)], capture_output=True, text=True, timeout=10).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    data = re.search(rf"^\s*{start:x}\s+([0-9a-f]{{8}})", dump, re.MULTILINE)
    if not data:
        return None
    little_endian = path.read_bytes()[5] == 1  # ELF header EI_DATA
    number = int.from_bytes(bytes.fromhex(data.group(1)), "little" if little_endian else "big")
    return f"{number >> 16}.{(number >> 8) & 0xFF:02d}.{number & 0xFF}"


def check_prolog_epilog(node: Node) -> Check:
    if node.settings is None:
        return Check("prolog", FAIL, "slurm.conf cannot be read", "see the slurm check")
    problems = []
    for key, default in (("prolog", render.DEFAULT_PROLOG), ("epilog", render.DEFAULT_EPILOG)):
        path = node.settings.get(key)
        if not path:
            problems.append(f"{key.capitalize()}= is not set (slurm-vgpu's is {default})")
        elif not os.access(path, os.X_OK):
            problems.append(f"{key.capitalize()}={path} is not an executable file")
    if problems:
        return Check("prolog", FAIL, "; ".join(problems),
                     f"include the output of 'slurm-vgpu render vgpu-slurm.conf --from-db' in {node.slurm_conf}")
    if "alloc" not in node.settings.get("prologflags", "").lower().split(","):
        return Check("prolog", WARN, "PrologFlags has no Alloc: the prolog runs only at the first step, "
                     "so sbatch scripts start before their GPU slice is set up", "add PrologFlags=Alloc")
    return Check("prolog", OK, f"Prolog={node.settings['prolog']} Epilog={node.settings['epilog']}")


def check_preemption(config: Config, node: Node) -> Check:
    """PreemptBestEffort=yes needs slurm.conf's PreemptMode to include REQUEUE, which Slurm takes
    only beside a PreemptType other than preempt/none (docs/slurm-behaviour.md)."""
    if not config.preempt_best_effort:
        return Check("preemption", OK, "off (PreemptBestEffort=no)")
    if node.settings is None:
        return Check("preemption", FAIL, "slurm.conf cannot be read", "see the slurm check")
    mode = node.settings.get("preemptmode", "OFF")
    kind = node.settings.get("preempttype", "preempt/none")
    fix = ("set PreemptType=preempt/qos and PreemptMode=REQUEUE in slurm.conf (preempt/qos preempts nothing "
           "by itself while no QoS lists another in its Preempt), or PreemptBestEffort=no in slurm-vgpu.conf")
    if "REQUEUE" not in mode.upper().split(","):
        return Check("preemption", FAIL, f"PreemptBestEffort=yes, but slurm.conf's PreemptMode is {mode}: "
                     "the placement daemon preempts nothing", fix)
    if kind.lower() == "preempt/none":
        return Check("preemption", FAIL, f"PreemptMode={mode} beside PreemptType={kind}: Slurm refuses this "
                     "slurm.conf", fix)
    return Check("preemption", OK, f"best-effort slices requeued for latency ones after "
                 f"{config.preempt_grace_time:g}s (PreemptType={kind}, PreemptMode={mode})")


def check_mps(config: Config) -> Check:
    found = shutil.which(config.mps_control)
    if not found:
        return Check("mps", FAIL, f"{config.mps_control} not found on PATH",
                     "install the NVIDIA driver's MPS tools, or set MpsControl= in slurm-vgpu.conf")
    return Check("mps", OK, found)


def check_gpus(config: Config) -> Check:
    source = config.inventory_for(config.node)
    try:
        gpus = inventory_from(source).gpus()
    except (InventoryError, ImportError) as exc:
        return Check("gpus", FAIL, str(exc), "check the driver (nvidia-smi), or Inventory= in slurm-vgpu.conf")
    if not gpus:
        return Check("gpus", WARN, f"no GPUs found ({source})", "check the driver (nvidia-smi)")
    models = ", ".join(f"{n}x {m}" for m, n in sorted(Counter(g.model for g in gpus).items()))
    return Check("gpus", OK, f"{len(gpus)} GPUs through {'NVML' if source == 'nvml' else source}: {models}")


def check_speeds(config: Config) -> Check:
    """Each model's speed and where it comes from; a model of none counts as an A100, which
    misplaces latency slices and reference-unit shares: that is a warning."""
    try:
        models = sorted({g.model for g in inventory_from(config.inventory_for(config.node)).gpus()})
    except (InventoryError, ImportError):
        return Check("speed", WARN, "the GPUs cannot be read (see the gpus check)")
    speeds = {m: speed_of(m, config.gpu_speeds) for m in models}
    unknown = [m for m, (_, source) in speeds.items() if source == "unknown"]
    if unknown:
        return Check("speed", WARN, "; ".join(f"GPU model {m} has no known speed and counts as an A100 "
                                              f"({UNKNOWN_SPEED:g})" for m in unknown),
                     "add GpuSpeed=" + ",".join(f"{m}:<throughput relative to an A100>" for m in unknown)
                     + " to slurm-vgpu.conf")
    return Check("speed", OK, ", ".join(f"{m} {speed:g} ({source})" for m, (speed, source) in speeds.items())
                 or "no GPUs")


def check_run_dir(run_dir: Path) -> Check:
    """Slice files and MPS pipes live here: a user who can write it could raise their own slice."""
    fix = f"install -d -o root -g root -m 0755 {run_dir}"
    try:
        info = run_dir.stat()
    except FileNotFoundError:
        return Check("run-dir", FAIL, f"{run_dir} does not exist", fix)
    if not stat.S_ISDIR(info.st_mode):
        return Check("run-dir", FAIL, f"{run_dir} is not a directory", fix)
    if info.st_uid != 0:
        return Check("run-dir", FAIL, f"{run_dir} is owned by uid {info.st_uid}, not root", f"chown root {run_dir}")
    if info.st_mode & 0o022:
        return Check("run-dir", FAIL, f"{run_dir} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})",
                     f"chmod go-w {run_dir}")
    return Check("run-dir", OK, f"{run_dir} root-owned, mode {stat.S_IMODE(info.st_mode):04o}")


def check_database(url: URL) -> Check:
    where = url.render_as_string(hide_password=True)
    head = ScriptDirectory.from_config(db.alembic_config(url)).get_current_head()
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.OperationalError as exc:
        return Check("database", FAIL, str(db.unreachable(url, exc)),
                     "start Postgres or fix DatabaseUrl= in slurm-vgpu.conf")
    finally:
        engine.dispose()
    if current != head:
        return Check("database", FAIL, f"{where} is at schema revision {current or 'none'}, the newest is {head}",
                     "slurm-vgpu db upgrade")
    return Check("database", OK, f"{where} at the newest schema ({head})")
