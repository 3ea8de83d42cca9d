"""What we know about NVIDIA GPU models: used to simulate GPUs and to score heterogeneous ones, and
how many MPS clients a GPU of each generation takes.

``speed`` is dense FP16 tensor throughput relative to an A100 (vendor datasheets, rounded); sites with
measured performance curves override it per model in the placement config.
"""
from __future__ import annotations

import re
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
        GpuModel("h100", "NVIDIA H100 80GB HBM3", 132, 81559, "9.0", 3.2),
        GpuModel("a100", "NVIDIA A100-SXM4-40GB", 108, 40960, "8.0", 1.0),
        GpuModel("l40s", "NVIDIA L40S", 142, 46068, "8.9", 1.2),
        GpuModel("t4", "Tesla T4", 40, 15360, "7.5", 0.21),
    )
}


def short_name(nvml_name: str) -> str:
    """Map an NVML device name ("NVIDIA A100-SXM4-40GB") to a short model name ("a100")."""
    tokens = [t for t in re.split(r"[\s\-_]+", nvml_name.lower()) if t not in ("", "nvidia", "tesla")]
    known = [t for t in tokens if t in MODELS]
    chosen = known[0] if known else (tokens[0] if tokens else "gpu")
    return re.sub(r"[^a-z0-9]", "", chosen)


def speed_of(short: str) -> float:
    model = MODELS.get(short)
    return model.speed if model else 1.0


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
