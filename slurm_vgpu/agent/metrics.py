"""Prometheus metrics of one node and dcgm-exporter's HPC job-mapping files.

Names are ``slurm_vgpu_*`` in base units (bytes, ratios 0..1, seconds). Labels join with
dcgm-exporter's: ``gpu`` (the GPU's index), ``UUID``, ``Hostname`` (as dcgm-exporter spells them)
and, per job, ``hpc_job`` (what dcgm-exporter adds from ``--hpc-job-mapping-dir``), so
``DCGM_FI_DEV_FB_USED * on(UUID, hpc_job) slurm_vgpu_job_share_ratio`` joins one-to-one.

The families are built from the latest :class:`~slurm_vgpu.agent.observe.NodeView` at scrape time;
the agent's loop replaces the view, the HTTP thread only reads it.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric

from .observe import GpuView, NodeView

MIB = 1024 * 1024
GPU_LABELS = ("gpu", "UUID", "Hostname", "modelName")
JOB_LABELS = ("gpu", "UUID", "Hostname", "hpc_job", "slo_class")
GPU_STATES = ("up", "draining", "down")


class AgentMetrics:
    """A prometheus-client collector over the agent's latest view and its action counters."""

    def __init__(self, node: str):
        self.node = node
        self.view: NodeView | None = None
        self.throttled: frozenset[int] = frozenset()
        self.actions: Counter[tuple[str, str]] = Counter()  # (action, gpu uuid) -> count

    def count(self, action: str, gpu_uuid: str) -> None:
        self.actions[(action, gpu_uuid)] += 1

    def collect(self) -> Iterator[Metric]:
        view = self.view
        if view is None:
            return
        yield from self._gpu_families(view)
        yield from self._job_families(view)
        actions = CounterMetricFamily(
            "slurm_vgpu_agent_actions", "What the agent did to a GPU or its jobs: mps_restart, "
            "mps_wedged_restart, gpu_fault, memory_kill", labels=("action", *GPU_LABELS))
        gpus = {g.record.uuid: g for g in view.gpus}
        for (action, uuid), n in sorted(self.actions.items()):
            if uuid in gpus:
                actions.add_metric((action, *self._gpu_labels(gpus[uuid])), n)
        yield actions

    def _gpu_labels(self, gpu: GpuView) -> tuple[str, ...]:
        return (str(gpu.record.index), gpu.record.uuid, self.node, gpu.record.name)

    def _gpu_families(self, view: NodeView) -> Iterator[Metric]:
        def gauge(name: str, text: str, labels=GPU_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=labels)

        slices = gauge("slurm_vgpu_gpu_slices", "Active vgpu slices placed on the GPU")
        share = gauge("slurm_vgpu_gpu_share_used_ratio", "Sum of the slices' shares of the GPU's SMs (0..1)")
        placed = gauge("slurm_vgpu_gpu_memory_placed_bytes", "Sum of the slices' memory caps")
        used = gauge("slurm_vgpu_gpu_memory_used_bytes", "GPU memory used by compute processes (NVML)")
        util = gauge("slurm_vgpu_gpu_utilization_ratio", "GPU busy ratio over NVML's last sample (0..1)")
        mps = gauge("slurm_vgpu_gpu_mps_daemon_up", "1 when the GPU's MPS control daemon runs")
        state = gauge("slurm_vgpu_gpu_state", "1 for the GPU's placement state", labels=(*GPU_LABELS, "state"))
        for gpu in view.gpus:
            labels = self._gpu_labels(gpu)
            own = [s for s in view.slices if s.gpu_uuid == gpu.record.uuid]
            slices.add_metric(labels, len(own))
            share.add_metric(labels, sum(s.share for s in own) / 100)
            placed.add_metric(labels, sum(s.memory_mib or 0 for s in own) * MIB)
            used.add_metric(labels, sum(p.used_mib for p in view.processes if p.gpu_uuid == gpu.record.uuid) * MIB)
            if gpu.utilization is not None:
                util.add_metric(labels, gpu.utilization)
            mps.add_metric(labels, int(gpu.mps_daemon))
            for name in GPU_STATES:
                state.add_metric((*labels, name), int(gpu.state == name))
        yield from (slices, share, placed, used, util, mps, state)

    def _job_families(self, view: NodeView) -> Iterator[Metric]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=JOB_LABELS)

        share = gauge("slurm_vgpu_job_share_ratio", "The job's slice: share of the GPU's SMs (0..1)")
        limit = gauge("slurm_vgpu_job_memory_limit_bytes", "The job's GPU memory cap (--vgpu-mem)")
        used = gauge("slurm_vgpu_job_memory_used_bytes", "GPU memory used by the job's processes")
        util = gauge("slurm_vgpu_job_utilization_ratio",
                     "SM use of the job's processes relative to its slice (1 = using its whole slice)")
        throttled = gauge("slurm_vgpu_job_throttled", "1 while the SLO guard holds the job frozen")
        gpus = {g.record.uuid: g for g in view.gpus}
        for s in view.slices:
            gpu = gpus.get(s.gpu_uuid)
            if gpu is None:
                continue
            labels = (*self._gpu_labels(gpu)[:3], str(s.job_id), s.slo_class.value)
            own = view.processes_of(s.job_id)
            share.add_metric(labels, s.share / 100)
            if s.memory_mib is not None:
                limit.add_metric(labels, s.memory_mib * MIB)
            used.add_metric(labels, sum(p.used_mib for p in own) * MIB)
            sampled = [p.sm_util for p in own if p.sm_util is not None]
            if sampled:
                util.add_metric(labels, sum(sampled) / (s.share / 100))
            throttled.add_metric(labels, int(s.job_id in self.throttled))
        yield from (share, limit, used, util, throttled)


def serve(metrics: AgentMetrics, port: int, address: str) -> None:
    """Serve ``/metrics`` from a daemon thread (prometheus-client's own HTTP server)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    start_http_server(port, address, registry=registry)


def write_job_mapping(directory: Path, view: NodeView) -> None:
    """dcgm-exporter's ``--hpc-job-mapping-dir``: one file per GPU index listing its job ids, one a
    line; a GPU without jobs has no file. Files are replaced atomically, so a scrape never reads half."""
    directory.mkdir(parents=True, exist_ok=True)
    for gpu in view.gpus:
        path = directory / str(gpu.record.index)
        jobs = sorted({s.job_id for s in view.slices if s.gpu_uuid == gpu.record.uuid and s.state == "running"})
        if not jobs:
            path.unlink(missing_ok=True)
            continue
        text = "".join(f"{j}\n" for j in jobs)
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        tmp = directory / f".{gpu.record.index}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(path)
