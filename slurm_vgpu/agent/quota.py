"""GPU memory per job: the sum over a job's processes on a GPU against the job's cap
(``--vgpu-mem``, ``placements.memory_mib``).

MPS limits pinned memory per *client* of a server, and a user's server carries the *largest* cap of
that user's slices on the GPU: a job of four processes could use four times its cap, and a smaller
job of the same user is held to its own only here. When the sum is over the cap, the job's
processes there are ended largest first (the larger PID first among equals) until the rest fit:
the fewest processes whose end brings the job within its cap, so the user can tell from the
reason, which names each process and its memory, which ones go. Nothing else is touched. A process
is ended by ``terminate_client`` when it is a client of the GPU's MPS server (its GPU context is
torn down, the process sees cudaErrorMpsClientTerminated), else by SIGKILL.
"""
from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ..mps import MpsControl
from .observe import NodeView, Process


@dataclass(frozen=True)
class Overuse:
    """A job over its memory cap on one GPU, and the processes that end to bring it back under."""

    job_id: int
    gpu_uuid: str
    cap_mib: int
    used: tuple[tuple[int, int], ...]  # (pid, MiB) of each of the job's processes on the GPU, largest first
    ended: tuple[int, ...]  # the pids to end, largest first

    @property
    def used_mib(self) -> int:
        return sum(mib for _, mib in self.used)

    def reason(self) -> str:
        each = ", ".join(f"{pid}: {mib} MiB" for pid, mib in self.used)
        return (f"processes of the job used {self.used_mib} MiB of GPU memory together ({each}), over the job's "
                f"cap of {self.cap_mib} MiB (--vgpu-mem); slurm-vgpu terminated {', '.join(map(str, self.ended))}, "
                "largest first until the rest fit")


def over_cap(view: NodeView) -> list[Overuse]:
    """Capped jobs whose processes on a GPU (its own or any other) use more than the cap together."""
    caps = {s.job_id: s.memory_mib for s in view.slices if s.memory_mib is not None}
    groups: dict[tuple[int, str], list[Process]] = defaultdict(list)
    for p in view.processes:
        if p.job_id in caps:
            groups[(p.job_id, p.gpu_uuid)].append(p)
    found = []
    for (job_id, gpu_uuid), processes in sorted(groups.items()):
        used = tuple((p.pid, p.used_mib) for p in sorted(processes, key=lambda p: (p.used_mib, p.pid), reverse=True))
        ended = largest_first(used, caps[job_id])
        if ended:
            found.append(Overuse(job_id, gpu_uuid, caps[job_id], used, ended))
    return found


def largest_first(used: tuple[tuple[int, int], ...], cap_mib: int) -> tuple[int, ...]:
    """The pids of ``used`` (largest first) to end so that the rest use ``cap_mib`` or less."""
    left, ended = sum(mib for _, mib in used), []
    for pid, mib in used:
        if left <= cap_mib:
            break
        ended.append(pid)
        left -= mib
    return tuple(ended)


def terminate(control: MpsControl, pids: Iterable[int]) -> list[str]:
    """End each process's use of the GPU; returns how, one per pid (``terminate_client`` or ``SIGKILL``)."""
    servers = _servers_of_clients(control) if control.running() else {}
    how = []
    for pid in pids:
        if pid in servers:
            control.command(f"terminate_client {servers[pid]} {pid}")
            how.append("terminate_client")
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        how.append("SIGKILL")
    return how


def _servers_of_clients(control: MpsControl) -> dict[int, int]:
    """{client pid: its server's pid} over the GPU's running servers."""
    return {client: server for server in control.servers().values() for client in _clients(control, server)}


def _clients(control: MpsControl, server: int) -> Iterable[int]:
    return (int(line) for line in control.command(f"get_client_list {server}") if line.isdigit())
