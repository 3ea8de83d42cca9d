"""The node agent's loop: every ``AgentInterval`` it checks the GPUs (lost, MPS fault), restarts
dead or wedged MPS control daemons, enforces memory caps, and refreshes what the SLO guard and the
metrics read; it heartbeats every ``HeartbeatInterval``. The guard runs in its own thread, woken at
each edge of its duty cycle.

Every failure of one round (database down, Slurm unreachable) is logged and retried next round;
on SIGTERM/SIGINT the guard thaws every job it holds before the agent exits.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial

import psycopg
import sqlalchemy as sa

from ..adapters.gpus import GpuInventory, InventoryError
from ..adapters.slurm import Slurm, SlurmError
from ..config import Config
from ..db import store
from ..db.engine import session_scope
from ..mps import GpuMps, MpsError
from ..node import store as node_store
from . import faults, guard, heal, health, procs, quota
from .freezer import Freezer
from .inventory import register
from .metrics import AgentMetrics, write_job_mapping
from .observe import NodeView, gpu_states, look, node_slices

log = logging.getLogger("slurm_vgpu.agent")

IDLE_CHECK = 30.0  # seconds between looks for MPS servers whose user has no slice left


@dataclass
class Agent:
    config: Config
    engine: sa.Engine
    slurm: Slurm
    inventory: GpuInventory
    metrics: AgentMetrics
    freezer: Freezer
    settings: guard.GuardSettings
    job_of_sluid: procs.JobOfSluid  # names the job of a 26.05 SLUID cgroup (procs.JobIds)
    stop: threading.Event = field(default_factory=threading.Event)
    view: NodeView | None = None
    busy: set[str] = field(default_factory=set)
    beat_at: float = float("-inf")
    idle_check_at: float = float("-inf")
    health_check_at: float = float("-inf")
    mps_misses: health.Misses = field(default_factory=dict)

    @property
    def node(self) -> str:
        return self.config.node

    def run(self) -> None:
        while not self.stop.is_set():  # an agent started while the database is away waits for it
            try:
                register(self.engine, self.node, self.inventory, self.config.mps_max_clients, self.config.gpu_speeds,
                         self.config.speed_workload)
                break
            except sa.exc.OperationalError as exc:
                log.warning("cannot register %s yet, will retry: %s", self.node, str(exc).splitlines()[0])
                self.stop.wait(self.config.agent_interval)
        thawed = self.freezer.thaw_leftovers()
        if thawed:
            log.warning("thawed jobs %s left frozen by an earlier agent", thawed)
        guard_thread = threading.Thread(target=self.guard_loop, name="slo-guard", daemon=True)
        if self.settings.enabled:
            guard_thread.start()
        while not self.stop.is_set():
            try:
                self.tick()
            except (sa.exc.OperationalError, psycopg.OperationalError, SlurmError, MpsError, InventoryError) as exc:
                # psycopg's: the heal's plain connections (a Postgres out of slots under a burst)
                log.warning("agent round failed, will retry: %s", str(exc).splitlines()[0])
            except Exception:  # a dead agent silences the whole node: log the bug and keep going
                log.exception("agent round failed unexpectedly, will retry")
            self.stop.wait(self.config.agent_interval)
        if guard_thread.is_alive():
            guard_thread.join()

    def tick(self) -> None:
        if time.monotonic() - self.beat_at >= self.config.heartbeat_interval:
            with session_scope(self.engine) as session:
                store.heartbeat(session, self.node)
            self.beat_at = time.monotonic()
        present = self.inventory.gpus()
        with session_scope(self.engine) as session:
            states, slices = gpu_states(session, self.node), node_slices(session, self.node)
        self._fail_lost(present, states, slices)
        if self._fail_faulted(present):
            with session_scope(self.engine) as session:
                states, slices = gpu_states(session, self.node), node_slices(session, self.node)
        self._supervise(present, slices)
        self._heal(present)
        daemons = {g.uuid: GpuMps.of(self.config, g.uuid).control.running() for g in present}
        view = look(self.node, self.inventory, present, states, slices, daemons, self.job_of_sluid)
        self._enforce_quotas(view)
        self._note_guard(view)
        self.view = self.metrics.view = view
        mapping = self.config.hpc_job_mapping_dir_for(self.node)
        if mapping is not None:
            write_job_mapping(mapping, view)

    def _fail_lost(self, present, states: dict[str, str], slices) -> None:
        """A GPU registered here that NVML no longer lists is lost; drain it and move its slices."""
        listed = {g.uuid for g in present}
        occupied = {s.gpu_uuid for s in slices}
        for uuid in sorted(set(states) - listed):
            if states[uuid] == "up" or uuid in occupied:
                self._fail(uuid, "GPU lost: NVML no longer reports it")

    def _fail_faulted(self, present) -> bool:
        """Act on a fatal fault in a GPU's MPS logs; the log is set aside once every slice moved."""
        acted = False
        for gpu in present:
            found = faults.logged_fault(GpuMps.of(self.config, gpu.uuid).control.log_dir)
            if found is None:
                continue
            path, line = found
            if not self._fail(gpu.uuid, f"MPS fatal fault: {line}"):
                faults.set_aside(path)
            acted = True
        return acted

    def _fail(self, uuid: str, reason: str) -> list[int]:
        log.error("GPU %s: %s", uuid, reason)
        self.metrics.count("gpu_fault", uuid)
        return faults.fail_gpu(self.engine, self.slurm, self.node, uuid, reason)

    def _supervise(self, present, slices) -> None:
        """Restart each dead MPS control daemon, and each wedged one (:mod:`.health`), its running
        slices' caps set again (:class:`GpuMps`)."""
        connect = partial(node_store.connect, self.config.database_url)
        gpus = {gpu.uuid: GpuMps.of(self.config, gpu.uuid) for gpu in present}
        running = {uuid: {s.uid for s in slices if s.gpu_uuid == uuid and s.state == "running" and not s.whole}
                   for uuid in gpus}
        for uuid, mps in gpus.items():
            if mps.restart_if_dead(running[uuid], connect):
                log.warning("MPS control daemon of %s had died; restarted (pid %s)", uuid, mps.control.daemon_pid())
                self.metrics.count("mps_restart", uuid)
                self._event("mps-restarted", "MPS control daemon had died; restarted, caps set again", uuid)
        if time.monotonic() - self.health_check_at >= health.HEALTH_CHECK:
            self._restart_wedged(gpus, running, connect)

    def _restart_wedged(self, gpus: dict[str, GpuMps], running: dict[str, set[int]], connect) -> None:
        """Ask every running daemon a question; kill and restart those that missed too many (:mod:`.health`)."""
        timeout = self.config.mps_health_timeout
        probes = health.probe([m.control for m in gpus.values()], timeout)
        self.health_check_at = time.monotonic()  # the next question comes HEALTH_CHECK after this answer
        self.mps_misses = health.tally(self.mps_misses, probes)
        for uuid, pid in health.wedged(self.mps_misses):
            servers = gpus[uuid].restart_wedged(pid, running[uuid], connect)
            if servers is None:
                continue
            why = (f"MPS control daemon {pid} answered no question within {timeout:g} s {health.MISSES} times in a "
                   f"row (MpsHealthTimeout); killed it and its servers {servers or 'none'}, restarted it, caps set "
                   "again")
            log.error("GPU %s: %s", uuid, why)
            self.metrics.count("mps_wedged_restart", uuid)
            self._event("mps-wedged", why, uuid)

    def _heal(self, present) -> None:
        """Finish what hooks could not (:mod:`.heal`): the database answered this round. MPS servers
        are asked for their list only every IDLE_CHECK seconds (a command per GPU), and not where
        the daemon left the agent's last question unanswered: the round would wait out the command
        timeout, and the restart with it."""
        for job_id in heal.failed_prologs(self.config, self.slurm, self.node):
            self._event("prolog-healed", "released after its prolog could not reach the database", None, job_id)
        if time.monotonic() - self.idle_check_at < IDLE_CHECK:
            return
        self.idle_check_at = time.monotonic()
        for job_id in heal.lost_jobs(self.config, self.slurm, self.node, self.job_of_sluid):
            log.warning("job %d left nothing on %s; its slice is released", job_id, self.node)
        unanswered = {uuid for uuid, _ in self.mps_misses}  # not asked again before its next probe
        for gpu in present:
            if gpu.uuid in unanswered:
                continue
            for uid in heal.idle_servers(self.config, gpu.uuid):
                self._event("mps-server-stopped", f"uid {uid}'s MPS server had no active slice left", gpu.uuid)

    def _enforce_quotas(self, view: NodeView) -> None:
        overuses = quota.over_cap(view)
        if not overuses:
            return
        jobs = {j.job_id: j for j in self.slurm.jobs()}
        for over in overuses:
            reason = over.reason()
            if over.job_id in jobs:  # first: a job whose only process is killed ends at once
                self.slurm.annotate(jobs[over.job_id], reason)
            ways = quota.terminate(GpuMps.of(self.config, over.gpu_uuid).control, over.ended)
            how = ", ".join(f"{pid} by {way}" for pid, way in zip(over.ended, ways))
            log.warning("job %d: %s (%s)", over.job_id, reason, how)
            for _ in ways:
                self.metrics.count("memory_kill", over.gpu_uuid)
            self._event("memory-cap-exceeded", f"{reason} ({how})", over.gpu_uuid, over.job_id)

    def _note_guard(self, view: NodeView) -> None:
        """An event when the guard starts or stops protecting a GPU's latency slice."""
        busy = guard.busy_gpus(view, self.settings.busy_utilization) if self.settings.enabled else set()
        for uuid in sorted(busy - self.busy):
            self._event("guard-engaged", "latency slice busy: co-tenants throttled in time", uuid)
        for uuid in sorted(self.busy - busy):
            self._event("guard-released", "latency slice idle: co-tenants run freely", uuid)
        self.busy = busy

    def _event(self, kind: str, message: str, gpu_uuid: str | None, job_id: int | None = None) -> None:
        with session_scope(self.engine) as session:
            store.log_event(session, kind, message, job_id=job_id, gpu_uuid=gpu_uuid, node=self.node)

    def guard_loop(self) -> None:
        """Freeze and thaw co-tenants at each edge of the duty cycle; thaw everything on the way out."""
        holding: frozenset[int] = frozenset()
        while not self.stop.is_set():
            now = time.time()
            view = self.view
            want = guard.held(view, self.settings, now) if view else frozenset()
            self._apply(want, holding, view)
            holding = self.metrics.throttled = want
            self.stop.wait(max(0.0, guard.next_change(self.settings, now) - time.time()))
        self._apply(frozenset(), holding, self.view)
        self.metrics.throttled = frozenset()

    def _apply(self, want: frozenset[int], holding: frozenset[int], view: NodeView | None) -> None:
        def pids(job_id: int) -> list[int]:
            return [p.pid for p in view.processes_of(job_id)] if view else []

        for job_id in sorted(want - holding):
            self.freezer.freeze(job_id, pids(job_id))
        for job_id in sorted(holding - want):
            self.freezer.thaw(job_id, pids(job_id))


def stop_on_signals(agent: Agent) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop.set())
