"""Metrics in Prometheus text, with labels that join dcgm-exporter's, and its HPC job-mapping files."""
from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from slurm_vgpu.adapters.gpus import GpuRecord
from slurm_vgpu.agent.metrics import AgentMetrics, write_job_mapping
from slurm_vgpu.agent.observe import GpuView, NodeView, Process, Slice
from slurm_vgpu.policy import SloClass

H100 = GpuRecord(0, "GPU-a", "NVIDIA H100 80GB HBM3", "h100", 132, 81559, "9.0")
IDLE = GpuRecord(1, "GPU-b", "NVIDIA H100 80GB HBM3", "h100", 132, 81559, "9.0")
VIEW = NodeView(
    "node1",
    (GpuView(H100, "up", 0.6, True), GpuView(IDLE, "draining", 0.0, False)),
    (Slice(7, "GPU-a", 0, 30, 8192, SloClass.LATENCY, "running"),
     Slice(8, "GPU-a", 0, 20, None, SloClass.BEST_EFFORT, "running")),
    (Process(100, "GPU-a", 7, 2048, 0.15), Process(101, "GPU-a", 8, 1024, 0.2)),
)


def scrape(metrics: AgentMetrics) -> dict[str, dict[tuple, float]]:
    """What a Prometheus server would read: sample name -> {sorted labels: value}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return samples(generate_latest(registry).decode())


def samples(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(**kw) -> tuple:
    return tuple(sorted(kw.items()))


def test_gpu_metrics_are_in_base_units_with_dcgm_labels():
    metrics = AgentMetrics("node1")
    metrics.view = VIEW
    found = scrape(metrics)
    gpu0 = labels(gpu="0", UUID="GPU-a", Hostname="node1", modelName="NVIDIA H100 80GB HBM3")
    assert found["slurm_vgpu_gpu_slices"][gpu0] == 2
    assert found["slurm_vgpu_gpu_share_used_ratio"][gpu0] == 0.5
    assert found["slurm_vgpu_gpu_memory_used_bytes"][gpu0] == 3072 * 2**20
    assert found["slurm_vgpu_gpu_memory_placed_bytes"][gpu0] == 8192 * 2**20
    assert found["slurm_vgpu_gpu_mps_daemon_up"][gpu0] == 1
    gpu1 = labels(gpu="1", UUID="GPU-b", Hostname="node1", modelName="NVIDIA H100 80GB HBM3", state="draining")
    assert found["slurm_vgpu_gpu_state"][gpu1] == 1


def test_job_metrics_carry_hpc_job_and_utilisation_relative_to_the_slice():
    metrics = AgentMetrics("node1")
    metrics.view, metrics.throttled = VIEW, frozenset({8})
    metrics.count("memory_kill", "GPU-a")
    found = scrape(metrics)
    job7 = labels(gpu="0", UUID="GPU-a", Hostname="node1", hpc_job="7", slo_class="latency")
    job8 = labels(gpu="0", UUID="GPU-a", Hostname="node1", hpc_job="8", slo_class="best-effort")
    assert found["slurm_vgpu_job_share_ratio"][job7] == 0.3
    assert found["slurm_vgpu_job_memory_limit_bytes"][job7] == 8192 * 2**20
    assert job8 not in found["slurm_vgpu_job_memory_limit_bytes"]  # no cap, no series
    assert found["slurm_vgpu_job_utilization_ratio"][job7] == 0.5  # 15% of the GPU in a 30% slice
    assert (found["slurm_vgpu_job_throttled"][job7], found["slurm_vgpu_job_throttled"][job8]) == (0, 1)
    kills = labels(action="memory_kill", gpu="0", UUID="GPU-a", Hostname="node1", modelName="NVIDIA H100 80GB HBM3")
    assert found["slurm_vgpu_agent_actions_total"][kills] == 1


def test_job_mapping_files_list_each_gpus_running_jobs(tmp_path):
    (tmp_path / "1").write_text("5\n")  # a job that has since left GPU 1
    write_job_mapping(tmp_path, VIEW)
    assert (tmp_path / "0").read_text() == "7\n8\n"
    assert not (tmp_path / "1").exists()
