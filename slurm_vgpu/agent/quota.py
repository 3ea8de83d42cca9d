"""Per-process GPU memory against the job's cap (``--vgpu-mem``, ``placements.memory_mib``).

MPS caps memory per server, and a user's server carries the *largest* cap of that user's slices on
the GPU, so a smaller job of the same user is held only by this check. Like MPS's pinned-memory
limit it applies to each client process. An offender is terminated and nothing else is touched:
``terminate_client`` when the process is a client of the GPU's MPS server (its GPU context is torn
down, the process sees cudaErrorMpsClientTerminated), else SIGKILL.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from ..mps import MpsControl
from .observe import NodeView


@dataclass(frozen=True)
class Overuse:
    job_id: int
    pid: int
    gpu_uuid: str
    used_mib: int
    cap_mib: int

    def reason(self) -> str:
        return (f"process {self.pid} used {self.used_mib} MiB of GPU memory, over the job's cap of "
                f"{self.cap_mib} MiB (--vgpu-mem); slurm-vgpu terminated it")


def over_cap(view: NodeView) -> list[Overuse]:
    """Processes of a capped job that use more than the cap, on the job's own GPU or any other."""
    caps = {s.job_id: s.memory_mib for s in view.slices if s.memory_mib is not None}
    return [
        Overuse(p.job_id, p.pid, p.gpu_uuid, p.used_mib, caps[p.job_id])
        for p in view.processes if p.job_id in caps and p.used_mib > caps[p.job_id]
    ]


def terminate(control: MpsControl, pid: int) -> str:
    """End one process's use of the GPU; returns how (``terminate_client`` or ``SIGKILL``)."""
    server = _server_of(control, pid) if control.running() else None
    if server is not None:
        control.command(f"terminate_client {server} {pid}")
        return "terminate_client"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return "SIGKILL"


def _server_of(control: MpsControl, pid: int) -> int | None:
    return next((server for server in control.servers().values() if pid in _clients(control, server)), None)


def _clients(control: MpsControl, server: int) -> Iterable[int]:
    return (int(line) for line in control.command(f"get_client_list {server}") if line.isdigit())
