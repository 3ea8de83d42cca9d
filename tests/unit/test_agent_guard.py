"""The SLO guard's decisions: which co-tenants of a busy latency slice are held frozen, and when."""
from __future__ import annotations

import pytest

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.agent import guard
from slurm_vgpu.agent.observe import GpuView, NodeView, Process, Slice
from slurm_vgpu.config import Config, ConfigError
from slurm_vgpu.policy import SloClass

GPU = GpuRecord(0, "GPU-a", "Tesla T4", "t4", 40, 15360, "7.5")
OTHER = GpuRecord(1, "GPU-b", "Tesla T4", "t4", 40, 15360, "7.5")
SETTINGS = guard.GuardSettings(period_s=1.0, busy_utilization=0.1, best_effort_run=0.25, throughput_run=1.0)


def view(latency_util: float | None, gpu_util: float | None = None, extra=()) -> NodeView:
    slices = (
        Slice(1, "GPU-a", 0, 30, None, SloClass.LATENCY, "running"),
        Slice(2, "GPU-a", 0, 30, None, SloClass.BEST_EFFORT, "running"),
        Slice(3, "GPU-a", 0, 30, None, SloClass.THROUGHPUT, "running"),
        Slice(4, "GPU-b", 0, 30, None, SloClass.BEST_EFFORT, "running"),
        *extra,
    )
    processes = (Process(100, "GPU-a", 1, 500, latency_util), Process(200, "GPU-a", 2, 500, 0.5))
    gpus = (GpuView(GPU, "up", gpu_util, True), GpuView(OTHER, "up", 0.9, True))
    return NodeView("n1", gpus, slices, processes)


def test_best_effort_beside_a_busy_latency_slice_runs_only_its_share_of_each_period():
    busy = view(latency_util=0.8)
    assert guard.held(busy, SETTINGS, now=100.10) == frozenset()  # run window: first quarter
    assert guard.held(busy, SETTINGS, now=100.50) == {2}  # frozen for the rest of the period
    assert guard.held(busy, SETTINGS, now=101.20) == frozenset()


def test_throughput_and_other_gpus_are_left_alone_by_default():
    frozen = guard.held(view(latency_util=0.8), SETTINGS, now=100.9)
    assert 3 not in frozen and 4 not in frozen


def test_throughput_is_throttled_when_configured():
    settings = guard.GuardSettings(throughput_run=0.5, best_effort_run=0.25)
    assert guard.held(view(latency_util=0.8), settings, now=100.6) == {2, 3}


def test_idle_latency_slice_lets_everyone_run():
    assert guard.held(view(latency_util=0.0), SETTINGS, now=100.9) == frozenset()


def test_without_per_process_samples_the_gpu_utilisation_decides():
    assert guard.held(view(latency_util=None, gpu_util=0.7), SETTINGS, now=100.9) == {2}
    assert guard.held(view(latency_util=None, gpu_util=0.01), SETTINGS, now=100.9) == frozenset()


def test_a_latency_slice_without_processes_is_not_busy():
    idle = NodeView("n1", (GpuView(GPU, "up", 0.9, True),),
                    (Slice(1, "GPU-a", 0, 30, None, SloClass.LATENCY, "running"),
                     Slice(2, "GPU-a", 0, 30, None, SloClass.BEST_EFFORT, "running")), ())
    assert guard.busy_gpus(idle, 0.1) == set()


def test_a_job_whose_prolog_has_not_finished_is_not_frozen():
    starting = Slice(5, "GPU-a", 0, 10, None, SloClass.BEST_EFFORT, "pinned")
    assert 5 not in guard.held(view(latency_util=0.8, extra=(starting,)), SETTINGS, now=100.9)


def test_the_off_switch_holds_nothing():
    off = guard.GuardSettings(enabled=False)
    assert guard.held(view(latency_util=0.8), off, now=100.9) == frozenset()


def test_next_change_is_the_next_edge_of_the_duty_cycle():
    assert guard.next_change(SETTINGS, 100.1) == pytest.approx(100.25)
    assert guard.next_change(SETTINGS, 100.25) == pytest.approx(101.0)
    assert guard.next_change(SETTINGS, 100.9) == pytest.approx(101.0)


def test_settings_come_from_the_config_and_refuse_a_starving_run_fraction():
    settings = guard.settings_from(Config(guard_best_effort_run=0.5, guard_period=2.0, slo_guard=False))
    assert (settings.enabled, settings.best_effort_run, settings.period_s) == (False, 0.5, 2.0)
    with pytest.raises(ConfigError, match="GuardBestEffortRun"):
        guard.settings_from(Config(guard_best_effort_run=0))
