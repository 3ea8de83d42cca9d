"""The simulator's time mode: tasks queue, run for their traced time and leave, under the daemon's
decide path and under Slurm's own first-fit with backfill. The GPUs are the trace's: numbers, no
hardware."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_vgpu.cli.simulate import simulate as simulate_cmd
from slurm_vgpu.policy.model import PolicyConfig
from slurm_vgpu.sim.experiment import part_of
from slurm_vgpu.sim.slurm_baseline import SLURM_CONFIG, SlurmScheduler
from slurm_vgpu.sim.timeline import DaemonScheduler, Occupancy, compressed, offered_demand, replay
from slurm_vgpu.sim.trace import TraceError, load_nodes, load_timed_pods

POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,creation_time,deletion_time,scheduled_time\n"


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def task(name, created, runtime=None, deleted=None, num=1, milli=1000, spec="", qos="LS") -> str:
    """A task that ran ``runtime`` seconds from its creation, or (runtime None) one that never ran
    and was deleted at ``deleted``."""
    if runtime is None:
        return f"{name},1000,1024,{num},{milli},{spec},{qos},{created},{deleted},"
    return f"{name},1000,1024,{num},{milli},{spec},{qos},{created},{created + runtime},{created}"


@pytest.fixture
def one_node(tmp_path):
    return load_nodes(write(tmp_path / "n.csv", "sn,cpu_milli,memory_mib,gpu,model\n", ["n0,64000,262144,2,T4"]))


def run(cluster, pods, baseline: bool):
    workload = [(p.request, 1.0) for p in pods]
    if baseline:
        return replay(pods, SlurmScheduler(Occupancy(cluster, [0], SLURM_CONFIG, workload)))
    return replay(pods, DaemonScheduler(Occupancy(cluster, [0], PolicyConfig(policy="ours"), workload)))


def test_times_load_with_the_task_and_tasks_that_never_ran_have_no_run_time(tmp_path):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("late", 50, runtime=10), task("early", 5, runtime=30), task("gave-up", 7, deleted=9)]))
    assert [(p.request.job_id, p.created, p.runtime) for p in pods] == [
        ("early", 5, 30), ("gave-up", 7, None), ("late", 50, 10)]


def test_time_problems_are_all_reported(tmp_path):
    path = write(tmp_path / "p.csv", POD_HEADER, [
        "a,1000,1024,1,500,,LS,10,5,10", "b,1000,1024,1,500,,LS,10,20,30", "c,1000,1024,1,500,,LS,x,20,"])
    with pytest.raises(TraceError) as err:
        load_timed_pods(path)
    assert [(p.line, p.field) for p in err.value.problems] == [
        (2, "deletion_time"), (3, "scheduled_time"), (4, "creation_time")]
    with pytest.raises(TraceError) as err:
        load_timed_pods(write(tmp_path / "q.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n", ["a,1,1,1,5"]))
    assert [p.field for p in err.value.problems] == ["creation_time", "deletion_time"]


@pytest.mark.parametrize("baseline", [False, True], ids=["daemon", "slurm"])
def test_a_task_waits_for_the_room_an_end_frees(tmp_path, one_node, baseline):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("a", 0, runtime=100, num=2), task("b", 10, runtime=50), task("gave-up", 20, deleted=40)]))
    timeline = run(one_node, pods, baseline)
    assert timeline.waits == {"a": 0, "b": 90}
    assert [p.request.job_id for p in timeline.withdrawn] == ["gave-up"]
    assert (timeline.times[-1], timeline.allocated[-1]) == (150, 0)  # b's end empties the node
    assert max(timeline.allocated) == 2000


@pytest.mark.parametrize("baseline", [False, True], ids=["daemon", "slurm"])
def test_a_task_no_gpu_can_host_is_refused_not_kept_waiting(tmp_path, one_node, baseline):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("busy", 0, runtime=100, num=2), task("a100-only", 1, runtime=5, spec="A100")]))
    timeline = run(one_node, pods, baseline)
    assert [p.request.job_id for p in timeline.refused] == ["a100-only"]
    assert not timeline.stuck


def test_slurm_backfills_only_what_leaves_the_first_waiting_job_its_start(tmp_path, one_node):
    """EASY backfill: 'two' waits for both GPUs at t=100; 'short' ends before and may start at once,
    'long' would hold a GPU past t=100 and waits for 'two' to end."""
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("first", 0, runtime=100), task("two", 1, runtime=100, num=2),
        task("short", 2, runtime=50), task("long", 3, runtime=500)]))
    slurm = run(one_node, pods, baseline=True)
    assert slurm.waits == {"first": 0, "two": 99, "short": 0, "long": 197}
    # the daemon has no backfill reservation for whole GPUs: 'long' takes the GPU 'short' freed
    daemon = run(one_node, pods, baseline=False)
    assert daemon.waits["long"] == 49 and daemon.waits["two"] > 99


def test_compressing_time_keeps_run_times_and_patience(tmp_path):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("a", 100, runtime=40), task("b", 1100, runtime=60), task("c", 2100, deleted=2130)]))
    fast = compressed(pods, 10)
    assert [(p.created, p.runtime, p.deleted) for p in fast] == [(100, 40, 140), (200, 60, 260), (300, None, 330)]


def test_offered_demand_is_what_tasks_would_hold_if_each_started_on_arrival(tmp_path):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("a", 0, runtime=50, milli=500), task("b", 25, runtime=100), task("c", 100, runtime=10)]))
    mean, peak = offered_demand(pods, capacity=1000)
    # over [0, 100]: 0.5 GPU for 50 s, 1 GPU for 75 s
    assert (mean, peak) == (pytest.approx((0.5 * 50 + 75) / 100), 2.0)  # b and c at t=100


def test_a_cluster_fraction_keeps_whole_nodes_with_their_gpus(tmp_path):
    cluster = load_nodes(write(tmp_path / "n.csv", "sn,cpu_milli,memory_mib,gpu,model\n",
                               [f"n{i},64000,262144,{i % 3 + 1},T4" for i in range(10)]))
    part = part_of(cluster, 0.3, seed=42)
    assert len(part.nodes) == 3
    assert {g.node for g in part.gpus} == {n.name for n in part.nodes}
    assert len(part.gpus) == sum(int(n.name[1:]) % 3 + 1 for n in part.nodes)


def test_cli_time_mode_reports_each_class_beside_slurms_baseline(tmp_path):
    nodes = write(tmp_path / "n.csv", "sn,cpu_milli,memory_mib,gpu,model\n", ["n0,64000,262144,1,T4"])
    pods = write(tmp_path / "p.csv", POD_HEADER, [
        task("a", 0, runtime=100), task("b", 10, runtime=50, qos="BE"), task("c", 20, runtime=10, milli=300)])
    plot = tmp_path / "time.png"
    result = CliRunner().invoke(simulate_cmd, ["--nodes", str(nodes), "--pods", str(pods), "--time",
                                               "--policies", "ours,first-fit", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes().startswith(b"\x89PNG")
    out = json.loads(result.output)
    assert [r["policy"] for r in out["runs"]] == ["slurm", "ours", "first-fit"]
    ours = out["runs"][1]
    assert ours["started"] == 3 and ours["wait_mean_s"] == {"latency": 65.0, "best-effort": 90.0}
    table = CliRunner().invoke(simulate_cmd, ["--nodes", str(nodes), "--pods", str(pods), "--time"])
    assert table.exit_code == 0 and "wait best-effort s" in table.output


def test_cli_time_options_without_time_are_refused():
    result = CliRunner().invoke(simulate_cmd, ["--time-scale", "10"])
    assert result.exit_code == 2 and "need --time" in result.output


def test_class_priority_puts_a_class_ahead_in_the_daemons_queue_as_classpriority_does(tmp_path, one_node):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("busy", 0, runtime=100, num=2), task("batch", 10, runtime=50, num=2, qos="BE"),
        task("serve", 20, runtime=50, num=2, qos="LS")]))
    workload = [(p.request, 1.0) for p in pods]

    def waits(weights):
        occupancy = Occupancy(one_node, [0], PolicyConfig(policy="ours"), workload)
        return replay(pods, DaemonScheduler(occupancy), class_priority=weights).waits

    assert waits(None) == {"busy": 0, "batch": 90, "serve": 130}
    assert waits({"latency": 10000, "best-effort": -10000}) == {"busy": 0, "serve": 80, "batch": 140}


def test_cli_class_priority_is_read_as_the_config_reads_it(tmp_path):
    bad = CliRunner().invoke(simulate_cmd, ["--time", "--class-priority", "urgent:5"])
    assert bad.exit_code == 2 and "ClassPriority=latency:10000,best-effort:-10000" in bad.output
    assert "need --time" in CliRunner().invoke(simulate_cmd, ["--class-priority", "latency:1"]).output


def test_preemption_requeues_a_best_effort_task_for_a_waiting_latency_one_after_the_grace_time(tmp_path, one_node):
    pods = load_timed_pods(write(tmp_path / "p.csv", POD_HEADER, [
        task("train-a", 0, runtime=1000, qos="BE"), task("train-b", 5, runtime=1000, qos="BE"),
        task("serve", 100, runtime=50, qos="LS")]))
    workload = [(p.request, 1.0) for p in pods]

    def timeline(grace):
        occupancy = Occupancy(one_node, [0], PolicyConfig(policy="ours"), workload)
        return replay(pods, DaemonScheduler(occupancy, grace))

    assert timeline(None).waits == {"train-a": 0, "train-b": 0, "serve": 900}
    preempting = timeline(10)
    # train-b has run 105 s at the end of the grace time, train-a 110 s: train-b goes, and starts
    # again from its beginning once serve has ended
    assert preempting.waits == {"train-a": 0, "serve": 10, "train-b": 155}
    assert (preempting.preempted, preempting.work_lost) == (1, 1000 * 105)
    assert preempting.times[-1] == 160 + 1000  # train-b's second run ends last


def test_cli_preempt_grace_reports_what_was_preempted(tmp_path):
    nodes = write(tmp_path / "n.csv", "sn,cpu_milli,memory_mib,gpu,model\n", ["n0,64000,262144,1,T4"])
    pods = write(tmp_path / "p.csv", POD_HEADER, [task("train", 0, runtime=1000, qos="BE"),
                                                   task("serve", 100, runtime=50, qos="LS")])
    result = CliRunner().invoke(simulate_cmd, ["--nodes", str(nodes), "--pods", str(pods), "--time",
                                               "--policies", "ours", "--preempt-grace", "30", "--json"])
    assert result.exit_code == 0, result.output
    slurm, ours = json.loads(result.output)["runs"]
    assert (slurm["preempted"], ours["preempted"]) == (0, 1)
    assert ours["wait_mean_s"]["latency"] == 30.0 and ours["latency_on_time"] == 100.0
    assert ours["work_lost_gpu_h"] == round(130 / 3600, 3)
    assert "need --time" in CliRunner().invoke(simulate_cmd, ["--preempt-grace", "5"]).output
