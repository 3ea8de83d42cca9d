"""Real-GPU tests: they run where NVML finds a GPU (a lent H100) and skip elsewhere."""
from __future__ import annotations

import pytest

from slurm_vgpu.adapters.gpus import NvmlInventory


@pytest.fixture
def gpu():
    """The first GPU NVML reports."""
    try:
        return NvmlInventory().gpus()[0]
    except Exception as exc:  # no driver, no device: nothing to test here
        pytest.skip(f"no usable NVIDIA GPU: {exc}")
