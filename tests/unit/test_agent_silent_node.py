"""A job that waits because the only fitting GPUs sit on a node whose agent went silent is told
which node, in the reason the placement writes to its AdminComment."""
from __future__ import annotations

from slurm_vgpu.policy import GpuState, PolicyConfig, Request, place_slices

SILENT = "node n3's agent is silent (no heartbeat within 30s)"


def test_the_reason_names_the_silent_node_and_the_drained_gpu():
    gpus = [
        GpuState("GPU-a", "n3", 0, "h100", 81559, available=False, unavailable_reason=SILENT),
        GpuState("GPU-b", "n3", 1, "h100", 81559, available=False, unavailable_reason=SILENT),
        GpuState("GPU-c", "n1", 0, "h100", 81559, available=False,
                 unavailable_reason="n1 GPU 0 is draining: MPS fatal fault: [...]"),
        GpuState("GPU-d", "n2", 0, "t4", 15360),
    ]
    result = place_slices(gpus, [Request("7", 30, models=frozenset({"h100"}))], PolicyConfig())
    (blocked,) = result.blocked
    assert blocked.reason == (f"every h100 GPU is drained or down ({SILENT}; "
                              "n1 GPU 0 is draining: MPS fatal fault: [...])")
    assert not blocked.never
