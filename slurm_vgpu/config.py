"""``slurm-vgpu.conf``: one Slurm-style ``Key=Value`` file, root-owned, read by every component.

Slices and limits come from here and from Postgres, never from a user's environment. The path is
``/etc/slurm/slurm-vgpu.conf`` unless ``--config`` or ``SLURM_VGPU_CONF`` names another (the
prolog/epilog wrappers name it explicitly, since Slurm gives them a scrubbed environment).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from .policy import POLICIES

DEFAULT_PATH = Path("/etc/slurm/slurm-vgpu.conf")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/slurm_vgpu"
    # GPUs: "nvml", or the path of a simulated inventory file (dev clusters).
    inventory: str = "nvml"
    # MPS: the control binary; the fake one speaks the same protocol on machines without a GPU.
    mps_control: str = "nvidia-cuda-mps-control"
    run_dir: Path = Path("/run/slurm-vgpu")  # per-GPU pipe/log dirs, slice files
    slurm_conf: Path | None = None  # passed to Slurm commands when set (dev clusters)
    node_name: str | None = None  # this node's Slurm name; default: the short hostname
    multi_user: bool = False  # the site runs MPS multi-user mode on every GPU
    policy: str = "ours"
    latency_max_cotenants: int = 2
    reference_model: str | None = None
    starvation_wait: float = 600.0  # seconds before the oldest blocked request reserves a GPU
    pin_timeout: float = 120.0  # seconds a pinned job may stay pending before it is placed again
    cycle_interval: float = 1.0  # seconds between placement cycles
    # most decisions the placement daemon lets wait for the write in flight (each write carries
    # what was decided while the one before it was in flight); bench/placement measures it
    place_batch: int = 8
    # seconds the placement daemon keeps its typical requests (what fragmentation is measured
    # against) and the cluster view built on them, before rebuilding both from recent placements
    workload_refresh: float = 300.0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0  # a node silent for longer is unavailable to the placement
    metrics_port: int = 9835
    metrics_address: str = "127.0.0.1"
    agent_interval: float = 1.0  # seconds between the node agent's checks (MPS, faults, quotas, metrics)
    # dcgm-exporter's --hpc-job-mapping-dir (``%n``: node name); the agent writes one file per GPU index
    hpc_job_mapping_dir: str | None = None
    # SLO guard: while a latency slice is busy, co-tenants of the other classes run only part of each
    # period (cgroup freezer duty cycle). A run fraction of 1 never throttles that class.
    slo_guard: bool = True
    guard_period: float = 1.0  # seconds of one freeze/run cycle
    guard_busy_utilization: float = 0.1  # a latency slice is busy at this SM use or more (0..1 of the GPU)
    guard_best_effort_run: float = 0.25  # fraction of each period a best-effort co-tenant runs
    guard_throughput_run: float = 1.0  # fraction of each period a throughput co-tenant runs
    operator_uids: tuple[int, ...] = (0,)
    extra: dict[str, str] = field(default_factory=dict)  # keys of later components, kept verbatim

    @property
    def node(self) -> str:
        """This node's Slurm name: NodeName from the file, else the short hostname (as slurmd)."""
        return self.node_name or socket.gethostname().split(".")[0]

    def inventory_for(self, node: str) -> str:
        """``Inventory`` with ``%n`` replaced by the node name, as in slurm.conf paths."""
        return self.inventory.replace("%n", node)

    def hpc_job_mapping_dir_for(self, node: str) -> Path | None:
        """``HpcJobMappingDir`` with ``%n`` replaced by the node name; None when not configured."""
        return Path(self.hpc_job_mapping_dir.replace("%n", node)) if self.hpc_job_mapping_dir else None

    @property
    def slice_dir(self) -> Path:
        return self.run_dir / "jobs"

    def gpu_dir(self, gpu_uuid: str) -> Path:
        return self.run_dir / "mps" / gpu_uuid


_KEYS = {f.name.replace("_", ""): f for f in fields(Config) if f.name != "extra"}


def parse(text: str, source: str = "slurm-vgpu.conf") -> Config:
    """Keys are case-insensitive CamelCase as in slurm.conf (``DatabaseUrl=...``); ``#`` comments."""
    values: dict[str, object] = {}
    extra: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{source}:{number}: expected Key=Value, got {raw.strip()!r}")
        spec = _KEYS.get(key.strip().lower())
        if spec is None:
            extra[key.strip()] = value.strip()
            continue
        values[spec.name] = _convert(spec, value.strip(), f"{source}:{number}: {key.strip()}")
        if spec.name == "place_batch" and values["place_batch"] < 1:
            raise ConfigError(f"{source}:{number}: PlaceBatch: {values['place_batch']} decisions per "
                              "write is too few; give 1 or more")
        if spec.name == "policy" and values["policy"] not in POLICIES:
            raise ConfigError(f"{source}:{number}: Policy: {values['policy']!r} is not a policy; "
                              f"choose one of {', '.join(POLICIES)}")
    return Config(**values, extra=extra)


def load(path: Path | str | None = None) -> Config:
    path = Path(path or os.environ.get("SLURM_VGPU_CONF") or DEFAULT_PATH)
    try:
        return parse(path.read_text(), str(path))
    except FileNotFoundError:
        if path == DEFAULT_PATH:
            return Config()
        raise ConfigError(f"configuration file {path} does not exist") from None


def render(config: Config) -> str:
    lines = ["# slurm-vgpu.conf: generated by slurm-vgpu"]
    for spec in fields(Config):
        if spec.name == "extra":
            continue
        value = getattr(config, spec.name)
        if value is None:
            continue
        name = "".join(part.capitalize() for part in spec.name.split("_"))
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        lines.append(f"{name}={value}")
    lines += [f"{k}={v}" for k, v in config.extra.items()]
    return "\n".join(lines) + "\n"


def _convert(spec, value: str, where: str):
    kind = str(spec.type)
    try:
        if "bool" in kind:
            if value.lower() not in ("yes", "no", "true", "false", "1", "0"):
                raise ValueError("expected yes or no")
            return value.lower() in ("yes", "true", "1")
        if "tuple" in kind:
            return tuple(int(v) for v in value.split(",") if v.strip())
        if "float" in kind:
            return float(value)
        if "int" in kind:
            return int(value)
        if "Path" in kind:
            return Path(value)
        return value
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not valid ({exc})") from exc
