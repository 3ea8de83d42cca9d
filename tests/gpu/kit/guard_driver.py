"""The project's SLO guard driven on real clients without Slurm: the decisions are
``slurm_vgpu.agent.guard.held`` and ``next_change``, the freezing ``slurm_vgpu.agent.freezer.Freezer``.

Without Slurm there are no job cgroups, so each client stands for a job by its PID (job 1 the
latency client, job 2 the best-effort trainer), and the freezer takes its signal path
(SIGSTOP/SIGCONT). The view is built as the agent builds it, from NVML's processes and utilisation,
refreshed every ``AgentInterval`` (or from a simulated inventory, in the kit's own test); what the
agent's guard thread does at each edge of the duty cycle, this thread does too.
"""
from __future__ import annotations

import os
import socket
import threading
import time

from slurm_vgpu.adapters.gpus import GpuInventory, GpuRecord, NvmlInventory
from slurm_vgpu.agent import guard
from slurm_vgpu.agent.freezer import Freezer
from slurm_vgpu.agent.observe import GpuView, NodeView, Process, Slice
from slurm_vgpu.config import Config
from slurm_vgpu.policy import SloClass

LATENCY_JOB, TRAINER_JOB = 1, 2


class GuardDriver:
    """Runs the guard on one GPU while the block runs; thaws whatever it holds when it ends."""

    def __init__(self, gpu: GpuRecord, latency_pid: int, trainer_pid: int, share: int,
                 inventory: GpuInventory | None = None):
        self.gpu = gpu
        self.inventory = inventory or NvmlInventory()
        self.jobs = {latency_pid: LATENCY_JOB, trainer_pid: TRAINER_JOB}
        self.slices = (Slice(LATENCY_JOB, gpu.uuid, os.getuid(), share, None, SloClass.LATENCY, "running"),
                       Slice(TRAINER_JOB, gpu.uuid, os.getuid(), share, None, SloClass.BEST_EFFORT, "running"))
        self.settings = guard.GuardSettings()
        self.freezer = Freezer(socket.gethostname(), job_of_sluid=lambda sluid: None)  # no Slurm, no SLUIDs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kit-guard", daemon=True)
        self.freezes = 0
        self.error: BaseException | None = None
        self.looks = self.looks_with_latency = self.busy_looks = 0

    def how(self) -> str:
        """How the freezer holds the trainer here: its job's cgroup, or signals."""
        pids = [pid for pid, job in self.jobs.items() if job == TRAINER_JOB]
        if self.freezer.job_cgroup(TRAINER_JOB, pids) or self.freezer.task_cgroups(TRAINER_JOB, pids):
            return "a cgroup freezer"
        return "SIGSTOP/SIGCONT (no Slurm cgroup)"

    def look(self) -> NodeView:
        processes = tuple(Process(p.pid, self.gpu.uuid, self.jobs.get(p.pid), p.used_mib, p.sm_util)
                          for p in self.inventory.processes(self.gpu.uuid))
        utilization = self.inventory.utilization(self.gpu.uuid)
        view = NodeView(socket.gethostname(), (GpuView(self.gpu, "up", utilization, True),),
                        self.slices, processes)
        self.looks += 1
        self.looks_with_latency += bool(view.processes_of(LATENCY_JOB))
        self.busy_looks += self.gpu.uuid in guard.busy_gpus(view, self.settings.busy_utilization)
        return view

    def _loop(self) -> None:
        holding: frozenset[int] = frozenset()
        view, look_at = None, 0.0
        try:
            while not self.stop.is_set():
                now = time.time()
                if now >= look_at:
                    view, look_at = self.look(), now + Config.agent_interval
                want = guard.held(view, self.settings, now)
                self._apply(view, want, holding)
                holding = want
                self.stop.wait(max(0.0, min(guard.next_change(self.settings, now), look_at) - time.time()))
        except BaseException as exc:  # told by __exit__: a guard that stopped guarding fails the check
            self.error = exc
        finally:
            self._apply(view, frozenset(), holding)

    def _apply(self, view: NodeView | None, want: frozenset[int], holding: frozenset[int]) -> None:
        def pids(job_id: int) -> list[int]:
            return [p.pid for p in view.processes_of(job_id)] if view else []

        for job_id in sorted(want - holding):
            self.freezer.freeze(job_id, pids(job_id))
            self.freezes += 1
        for job_id in sorted(holding - want):
            self.freezer.thaw(job_id, pids(job_id))

    def __enter__(self) -> GuardDriver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"the guard stopped: {self.error}") from self.error
