"""The SLO guard's decisions (Herald's protection of latency work, FaST-GShare's time quota): while
a latency slice on a GPU is busy, its co-tenants of the other classes run only a fraction of each
period and are frozen for the rest; once the latency slice idles they run freely again.

Pure: a node view and the time in, the set of jobs to hold frozen (and when that set may next
change) out. ``freezer.py`` applies it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, ConfigError
from ..policy import SloClass
from .observe import NodeView


@dataclass(frozen=True)
class GuardSettings:
    """The guard's bounds (slurm-vgpu.conf's SloGuard and Guard* keys, whose defaults these are)."""

    enabled: bool = Config.slo_guard
    period_s: float = Config.guard_period
    busy_utilization: float = Config.guard_busy_utilization  # a latency slice at this SM use (0..1) is busy
    best_effort_run: float = Config.guard_best_effort_run  # fraction of each period a best-effort co-tenant runs
    throughput_run: float = Config.guard_throughput_run  # 1: throughput co-tenants are never throttled

    def run_fraction(self, slo_class: SloClass) -> float:
        return {SloClass.BEST_EFFORT: self.best_effort_run, SloClass.THROUGHPUT: self.throughput_run}.get(slo_class, 1.0)


def settings_from(config: Config) -> GuardSettings:
    """The guard's bounds from slurm-vgpu.conf; a run fraction of 0 would starve a job, so it is refused."""
    settings = GuardSettings(config.slo_guard, config.guard_period, config.guard_busy_utilization,
                             config.guard_best_effort_run, config.guard_throughput_run)
    for name, value in (("GuardBestEffortRun", settings.best_effort_run), ("GuardThroughputRun", settings.throughput_run)):
        if not 0 < value <= 1:
            raise ConfigError(f"{name}={value:g}: a run fraction must be in (0, 1]; 1 never throttles")
    if settings.period_s <= 0 or not 0 <= settings.busy_utilization <= 1:
        raise ConfigError("GuardPeriod must be > 0 and GuardBusyUtilization in [0, 1]")
    return settings


def busy_gpus(view: NodeView, threshold: float) -> set[str]:
    """GPUs with a busy latency slice: the SM use of its processes when NVML samples them, else the
    GPU's own utilisation while the slice has a process there."""
    busy = set()
    for s in view.slices:
        if s.slo_class is not SloClass.LATENCY:
            continue
        own = view.processes_of(s.job_id)
        sampled = [p.sm_util for p in own if p.sm_util is not None]
        gpu = view.gpu(s.gpu_uuid)
        if sampled:
            use = sum(sampled)
        elif own and gpu is not None and gpu.utilization is not None:
            use = gpu.utilization
        else:
            continue
        if use >= threshold:
            busy.add(s.gpu_uuid)
    return busy


def held(view: NodeView, settings: GuardSettings, now: float) -> frozenset[int]:
    """Jobs to keep frozen at time ``now``: co-tenants of a busy latency slice in the part of the
    period past their run fraction. All clocks agree on the phase, so every co-tenant of a class
    runs in the same window."""
    if not settings.enabled:
        return frozenset()
    busy = busy_gpus(view, settings.busy_utilization)
    phase = (now % settings.period_s) / settings.period_s
    return frozenset(
        s.job_id for s in view.slices
        if s.gpu_uuid in busy and s.slo_class is not SloClass.LATENCY and s.state == "running"
        and phase >= settings.run_fraction(s.slo_class)
    )


def next_change(settings: GuardSettings, now: float) -> float:
    """The next time ``held`` may answer differently for the same view: the next phase boundary."""
    start = now - now % settings.period_s
    edges = sorted({0.0, settings.best_effort_run, settings.throughput_run, 1.0})
    return next(start + e * settings.period_s for e in edges if start + e * settings.period_s > now)
