"""Whether each GPU's MPS control daemon answers, not only lives: a wedged daemon keeps its PID
while every command sent to it, each prolog's included, waits until it times out.

Every ``HEALTH_CHECK`` seconds the agent asks each running daemon ``get_server_list``, all at once,
each within ``MpsHealthTimeout`` seconds. A daemon that misses ``MISSES`` questions in a row is
wedged: it is killed with its servers and started again (:meth:`slurm_vgpu.mps.GpuMps.restart_wedged`).
One miss is not enough: a daemon answers its commands one at a time, and under a burst of job starts
a question can wait past the timeout behind the prologs' commands (on 2 cores, ~40 prologs at once
pushed single commands past 5 s). A busy daemon answers again once the burst has passed; a wedged
one misses every question. A restart ends the work of every MPS client on the GPU, so it waits for
the second miss, about ``HEALTH_CHECK`` + ``MpsHealthTimeout`` seconds after the first.
"""
from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..mps import MpsControl

MISSES = 2  # questions in a row a daemon leaves unanswered before it is taken for wedged
HEALTH_CHECK = 10.0  # seconds from one probe's end to the next (each asks by a run of the control binary)

Misses = dict[tuple[str, int], int]  # (GPU uuid, daemon PID) -> questions missed in a row


@dataclass(frozen=True)
class Probe:
    """One question to one GPU's running control daemon."""

    gpu_uuid: str
    daemon_pid: int
    answered: bool


def probe(controls: Iterable[MpsControl], timeout: float) -> list[Probe]:
    """Ask every running daemon at once, so a round waits one timeout however many are wedged."""
    running = [(control, pid) for control in controls if (pid := control.daemon_pid()) is not None]
    if not running:
        return []
    with ThreadPoolExecutor(len(running), thread_name_prefix="mps-health") as pool:
        answers = list(pool.map(lambda pair: pair[0].answers(timeout), running))
    return [Probe(control.gpu_uuid, pid, answered) for (control, pid), answered in zip(running, answers)]


def tally(misses: Misses, probes: Iterable[Probe]) -> Misses:
    """The misses in a row after one probe of every daemon: an answer clears a daemon's count, and
    so does a daemon no longer probed (it ended, or a new one with another PID runs in its place)."""
    return {(p.gpu_uuid, p.daemon_pid): misses.get((p.gpu_uuid, p.daemon_pid), 0) + 1
            for p in probes if not p.answered}


def wedged(misses: Misses) -> list[tuple[str, int]]:
    """The daemons, as (GPU uuid, PID), that missed ``MISSES`` questions in a row."""
    return sorted(key for key, count in misses.items() if count >= MISSES)
