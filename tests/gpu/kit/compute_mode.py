"""A GPU's compute mode, read and set through NVML by UUID.

Stands in until ``slurm_vgpu.adapters.gpus`` has compute-mode functions of its own; then the kit
calls those and this module goes (NVML is otherwise reached only through that adapter, whose NVML
session this borrows)."""
from __future__ import annotations

from slurm_vgpu.adapters.gpus import _nvml

DEFAULT, EXCLUSIVE_PROCESS = 0, 3  # NVML_COMPUTEMODE_*
NAMES = {0: "DEFAULT", 1: "EXCLUSIVE_THREAD", 2: "PROHIBITED", 3: "EXCLUSIVE_PROCESS"}


def get(uuid: str) -> int:
    with _nvml() as pynvml:
        return pynvml.nvmlDeviceGetComputeMode(pynvml.nvmlDeviceGetHandleByUUID(uuid))


def set_(uuid: str, mode: int) -> None:
    """Raises pynvml's NVMLError_NoPermission or NVMLError_NotSupported where the node forbids it."""
    with _nvml() as pynvml:
        pynvml.nvmlDeviceSetComputeMode(pynvml.nvmlDeviceGetHandleByUUID(uuid), mode)


def refusals() -> tuple[type[Exception], ...]:
    """NVML's answers for a node that may not change the mode (a VM, a user without root)."""
    import pynvml

    return (pynvml.NVMLError_NoPermission, pynvml.NVMLError_NotSupported)
