"""The pure placement policy shared by the placement daemon, the CLI's dry run and the simulator."""
from .model import (
    Blocked,
    Decision,
    GpuState,
    NodeState,
    PlacementResult,
    PolicyConfig,
    Request,
    SloClass,
)
from .placement import place_slices
from .scoring import SCORERS

POLICIES = tuple(SCORERS)

__all__ = [
    "Blocked",
    "Decision",
    "GpuState",
    "NodeState",
    "PlacementResult",
    "POLICIES",
    "PolicyConfig",
    "Request",
    "SloClass",
    "place_slices",
]
