"""``slurm-vgpu.conf``: one Slurm-style ``Key=Value`` file, root-owned, read by every component.

Slices and limits come from here and from Postgres, never from a user's environment. The path is
``/etc/slurm/slurm-vgpu.conf`` unless ``--config`` or ``SLURM_VGPU_CONF`` names another (the
prolog/epilog wrappers name it explicitly, since Slurm gives them a scrubbed environment). A key
this module does not know is refused, as the SPANK plugin refuses an unknown argument: a misspelt
key must not leave its default silently in force.

``python -m slurm_vgpu.config FILE`` (``-`` for stdin) checks a file with nothing but the standard
library: the Ansible role checks its extra keys with it before anything is installed.
"""
from __future__ import annotations

import difflib
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from . import contract
from .catalog import MPS_CLIENTS, MPS_CLIENTS_BEFORE_VOLTA
from .policy import POLICIES, PolicyConfig

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
    # the most slices a GPU holds, below its MPS server's own limit (48 from compute capability 7.0,
    # 16 before); None: each GPU's own limit. A GPU whose limit is lower keeps its own.
    mps_max_clients: int | None = None
    # a GPU that carries slices is EXCLUSIVE_PROCESS, so only its MPS server holds a context there;
    # "no" leaves the compute mode alone (weaker: a task that unsets CUDA_MPS_PIPE_DIRECTORY gets an
    # uncapped context of its own beside the server)
    exclusive_compute_mode: bool = True
    run_dir: Path = Path(contract.RUN_DIR)  # per-GPU pipe/log dirs, slice files
    slurm_conf: Path | None = None  # passed to Slurm commands when set (dev clusters)
    node_name: str | None = None  # this node's Slurm name; default: the short hostname
    default_class: str = contract.DEFAULT_CLASS  # the SLO class of a vgpu job that names none (job_submit.lua)
    # the placement policy's settings: their defaults are the pure policy's own
    multi_user: bool = PolicyConfig.multi_user  # the site runs MPS multi-user mode on every GPU
    policy: str = PolicyConfig.policy
    latency_max_cotenants: int = PolicyConfig.latency_max_cotenants
    reference_model: str | None = PolicyConfig.reference_model
    # the site's speed of a GPU model relative to an A100 (``GpuSpeed=h200:3.4,l4:0.39``), before
    # the datasheet's (catalog.py); read by the node agent when it registers its GPUs
    gpu_speed: tuple[tuple[str, float], ...] = ()
    # a profiled workload (slurm-vgpu profile) whose throughput on a whole GPU gives each model it was
    # measured on its speed, before GpuSpeed; read by the node agent when it registers its GPUs
    speed_workload: str | None = None
    # added to Slurm's priority of a waiting vgpu job of that class when the placement orders the
    # jobs it places (``ClassPriority=latency:10000,best-effort:-10000``); unnamed classes add 0
    class_priority: tuple[tuple[str, int], ...] = ()
    starvation_wait: float = PolicyConfig.starvation_wait_s  # seconds before the oldest blocked request reserves a GPU
    # a latency slice that finds no room may requeue best-effort slices (slurm_vgpu.policy.preemption),
    # where slurm.conf's PreemptMode includes REQUEUE; they get SIGTERM, and are requeued
    # PreemptGraceTime seconds later, or as soon as they have ended
    preempt_best_effort: bool = False
    preempt_grace_time: float = 30.0
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
    # seconds a GPU's MPS control daemon has to answer the agent's question; two misses in a row
    # and it is killed and restarted (slurm_vgpu.agent.health says why two)
    mps_health_timeout: float = 10.0
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
    def gpu_speeds(self) -> dict[str, float]:
        return dict(self.gpu_speed)

    @property
    def class_priorities(self) -> dict[str, int]:
        return dict(self.class_priority)

    @property
    def slice_dir(self) -> Path:
        return self.run_dir / contract.SLICE_DIR

    def gpu_dir(self, gpu_uuid: str) -> Path:
        return self.run_dir / "mps" / gpu_uuid


def key_name(field_name: str) -> str:
    """A field's key as the file spells it: ``heartbeat_timeout`` -> ``HeartbeatTimeout``."""
    return "".join(part.capitalize() for part in field_name.split("_"))


_KEYS = {f.name.replace("_", ""): f for f in fields(Config)}  # lower-case key -> field
KEYS = tuple(key_name(f.name) for f in fields(Config))  # every key, as the file spells it


def unknown_key(key: str, keys: Sequence[str] = KEYS) -> str:
    """Why ``key`` is refused, naming the known key of ``keys`` nearest to it (or all of them, when
    none is near); keys compare without case, as Slurm's do."""
    spelt = {k.lower(): k for k in keys}
    near = difflib.get_close_matches(key.lower(), list(spelt), n=1)
    if near:
        return f"unknown key {key!r}; did you mean {spelt[near[0]]!r}?"
    return f"unknown key {key!r}; the keys are {', '.join(keys)}"


def parse(text: str, source: str = "slurm-vgpu.conf") -> Config:
    """Keys are case-insensitive CamelCase as in slurm.conf (``DatabaseUrl=...``); ``#`` comments."""
    values: dict[str, object] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{source}:{number}: expected Key=Value, got {raw.strip()!r}")
        spec = _KEYS.get(key.strip().lower())
        if spec is None:
            raise ConfigError(f"{source}:{number}: {unknown_key(key.strip())}")
        values[spec.name] = _convert(spec, value.strip(), f"{source}:{number}: {key.strip()}")
        if spec.name == "place_batch" and values["place_batch"] < 1:
            raise ConfigError(f"{source}:{number}: PlaceBatch: {values['place_batch']} decisions per "
                              "write is too few; give 1 or more")
        if spec.name == "mps_max_clients" and not 1 <= values["mps_max_clients"] <= MPS_CLIENTS:
            raise ConfigError(f"{source}:{number}: MpsMaxClients: {values['mps_max_clients']} is not 1 to "
                              f"{MPS_CLIENTS}: an MPS server takes at most {MPS_CLIENTS} clients per GPU "
                              f"({MPS_CLIENTS_BEFORE_VOLTA} below compute capability 7.0, whatever this key "
                              f"says); give 1 to {MPS_CLIENTS}, or leave the key out for each GPU's own limit")
        if spec.name == "mps_health_timeout" and values["mps_health_timeout"] <= 0:
            raise ConfigError(f"{source}:{number}: MpsHealthTimeout: {values['mps_health_timeout']} seconds leaves "
                              "no time to answer; give a number of seconds above 0, e.g. 10")
        if spec.name == "default_class" and contract.class_error(values["default_class"]):
            raise ConfigError(f"{source}:{number}: DefaultClass: {values['default_class']!r} is not an SLO class; "
                              f"choose one of {', '.join(contract.SLO_CLASSES)}")
        if spec.name == "speed_workload" and contract.profile_error(values["speed_workload"]):
            raise ConfigError(f"{source}:{number}: SpeedWorkload: {values['speed_workload']!r} is not a workload "
                              "name; give the name of a profiled workload (slurm-vgpu profiles), e.g. resnet50")
        if spec.name == "policy" and values["policy"] not in POLICIES:
            raise ConfigError(f"{source}:{number}: Policy: {values['policy']!r} is not a policy; "
                              f"choose one of {', '.join(POLICIES)}")
    return Config(**values)


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
        value = getattr(config, spec.name)
        if value is None or (spec.name in NAMED_NUMBERS and not value):
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif spec.name in NAMED_NUMBERS:
            value = ",".join(f"{name}:{number:g}" for name, number in value)
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        lines.append(f"{key_name(spec.name)}={value}")
    return "\n".join(lines) + "\n"


def _convert(spec, value: str, where: str):
    kind = str(spec.type)
    if spec.name in NAMED_NUMBERS:
        return NAMED_NUMBERS[spec.name](value, where)
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


def _named_numbers(value: str, where: str, convert, valid, example: str, meaning: str) -> tuple:
    """``h200:3.4,l4:0.39`` -> (("h200", 3.4), ("l4", 0.39)), each name lower-cased and each
    number ``convert``-ed and ``valid(name, number)``; else an error with ``example``."""
    pairs: dict[str, object] = {}
    for item in filter(None, (v.strip() for v in value.split(","))):
        name, sep, text = (part.strip() for part in item.partition(":"))
        try:
            number = convert(text) if sep and name else None
        except ValueError:
            number = None
        if number is None or not valid(name.lower(), number):
            raise ConfigError(f"{where}: {item!r} is not {meaning}; write e.g. {example}")
        pairs[name.lower()] = number
    return tuple(pairs.items())


NAMED_NUMBERS = {
    "gpu_speed": lambda value, where: _named_numbers(
        value, where, float, lambda model, speed: 0 < speed < float("inf"), "GpuSpeed=h200:3.4,l4:0.39",
        "model:speed (each model's throughput relative to an A100's, above 0)"),
    "class_priority": lambda value, where: _named_numbers(
        value, where, int, lambda cls, weight: cls in contract.SLO_CLASSES, "ClassPriority=latency:10000,best-effort:-10000",
        f"class:weight (a class of {', '.join(contract.SLO_CLASSES)} and a whole number)"),
}


def main(argv: list[str] | None = None) -> int:
    """Check a slurm-vgpu.conf (``-``: stdin): exit 2 with its first error on stderr, else 0."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m slurm_vgpu.config FILE|-", file=sys.stderr)
        return 2
    try:
        if args[0] == "-":
            parse(sys.stdin.read(), "<stdin>")
        else:
            parse(Path(args[0]).read_text(), args[0])
    except (ConfigError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
