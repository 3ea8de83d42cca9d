"""Reference units: ``vgpu:30`` may mean 30% of a reference GPU's throughput, not of the GPU it lands on."""
from __future__ import annotations

import math
from collections.abc import Iterable

from .model import GpuState, PolicyConfig


def reference_speed(gpus: Iterable[GpuState], config: PolicyConfig) -> float:
    """Speed of the reference model as the GPUs report it; 1.0 when none is present (speeds are
    relative to the reference already)."""
    if not config.reference_model:
        return 1.0
    wanted = config.reference_model.lower()
    speeds = [g.speed for g in gpus if g.model.lower() == wanted]
    return max(speeds) if speeds else 1.0


def units_at(share: int, speed: float, config: PolicyConfig, ref_speed: float) -> int:
    """Capacity units a share needs on a GPU of this speed: ``ceil(share * r / s)`` in reference
    units, the share itself in plain units.

    Rounded at 1e-9 first so that 30 * 2.0 / 3.0 is 20, not 21.
    """
    if not config.reference_model:
        return share
    return math.ceil(round(share * ref_speed / speed, 9))
