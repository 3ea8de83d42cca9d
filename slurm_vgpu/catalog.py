"""What we know about NVIDIA GPU models: used to simulate GPUs and to score heterogeneous ones, and
how many MPS clients a GPU of each generation takes.

``speed`` is dense FP16 tensor throughput relative to an A100 (vendor datasheets, without sparsity,
rounded); a site sets its own per model with ``GpuSpeed`` in slurm-vgpu.conf, which comes first, or
has it measured (``SpeedWorkload``: a profiled workload's throughput), which comes before both.
A model in neither has no speed: the agent says so and ``doctor`` warns, and it counts as an A100.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    short: str  # what users write in --gres=vgpu:<model>:N and what GRES types start with
    name: str  # what NVML reports as the device name
    sm_count: int
    memory_mib: int
    compute_capability: str
    speed: float


MODELS: dict[str, GpuModel] = {
    m.short: m
    for m in (
        GpuModel("h200", "NVIDIA H200", 132, 143771, "9.0", 3.2),  # 989 TFLOPS, as the H100
        GpuModel("h100", "NVIDIA H100 80GB HBM3", 132, 81559, "9.0", 3.2),  # 989
        GpuModel("a100", "NVIDIA A100-SXM4-40GB", 108, 40960, "8.0", 1.0),  # 312
        GpuModel("l40s", "NVIDIA L40S", 142, 46068, "8.9", 1.2),  # 362
        GpuModel("l40", "NVIDIA L40", 142, 46068, "8.9", 0.58),  # 181
        GpuModel("a30", "NVIDIA A30", 56, 24576, "8.0", 0.53),  # 165
        GpuModel("a10", "NVIDIA A10", 72, 23028, "8.6", 0.4),  # 125
        GpuModel("l4", "NVIDIA L4", 58, 23034, "8.9", 0.39),  # 121
        GpuModel("v100", "Tesla V100-SXM2-32GB", 80, 32768, "7.0", 0.4),  # 125
        GpuModel("t4", "Tesla T4", 40, 15360, "7.5", 0.21),  # 65
    )
}


def short_name(nvml_name: str) -> str:
    """Map an NVML device name ("NVIDIA A100-SXM4-40GB") to a short model name ("a100")."""
    tokens = [t for t in re.split(r"[\s\-_]+", nvml_name.lower()) if t not in ("", "nvidia", "tesla")]
    known = [t for t in tokens if t in MODELS]
    chosen = known[0] if known else (tokens[0] if tokens else "gpu")
    return re.sub(r"[^a-z0-9]", "", chosen)


UNKNOWN_SPEED = 1.0  # what a model of no known speed counts as: the reference, an A100


def speed_of(short: str, site: Mapping[str, float] = {}, measured: Mapping[str, float] = {}) -> tuple[float, str]:
    """(speed, where it comes from): ``measured`` (from the site's ``SpeedWorkload`` profile), else
    the site's ``GpuSpeed``, else the datasheet table, else :data:`UNKNOWN_SPEED` from ``"unknown"``."""
    if short in measured:
        return measured[short], "profile"
    if short in site:
        return site[short], "GpuSpeed"
    model = MODELS.get(short)
    return (model.speed, "datasheet") if model else (UNKNOWN_SPEED, "unknown")


def measured_speeds(full_gpu_throughput: Mapping[str, float], site: Mapping[str, float] = {}) -> dict[str, float]:
    """Speeds from one workload's throughput on a whole GPU of each model, on the A100 scale: anchored
    on the A100 when it was measured, else on the measured model of the highest known speed (the
    site's or the datasheet's). Empty when no measured model has a known speed to anchor on."""
    known = {m: speed_of(m, site)[0] for m, t in full_gpu_throughput.items() if t > 0 and speed_of(m, site)[1] != "unknown"}
    if not known:
        return {}
    anchor = "a100" if "a100" in known else max(known, key=lambda m: (known[m], m))
    scale = known[anchor] / full_gpu_throughput[anchor]
    return {m: round(t * scale, 3) for m, t in full_gpu_throughput.items() if t > 0}


# An MPS server takes at most this many client CUDA contexts per GPU: 48 on Volta (compute
# capability 7.0) and newer, 16 before (NVIDIA's MPS documentation, "Limitations").
MPS_CLIENTS = 48
MPS_CLIENTS_BEFORE_VOLTA = 16


def mps_clients(compute_capability: str, most: int | None = None) -> int:
    """The most slices one GPU of this compute capability ("8.0") may hold: the MPS server's limit,
    or ``most`` (the site's ``MpsMaxClients``) where that is lower."""
    major = int(compute_capability.split(".", 1)[0])
    hardware = MPS_CLIENTS if major >= 7 else MPS_CLIENTS_BEFORE_VOLTA
    return hardware if most is None else min(most, hardware)
