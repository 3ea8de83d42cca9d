"""The trace simulator: loading, the FGD paper's protocol, its figures, and ours against FGD."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from slurm_vgpu.cli.simulate import simulate as simulate_cmd
from slurm_vgpu.policy.apply import place_on
from slurm_vgpu.policy.model import PolicyConfig, Request, SloClass
from slurm_vgpu.policy.placement import build_context
from slurm_vgpu.policy.rules import Ask, fitting_positions
from slurm_vgpu.policy.scoring import SCORERS, candidates, evaluate
from slurm_vgpu.policy.view import group_nodes
from slurm_vgpu.sim.metrics import figures
from slurm_vgpu.sim.protocol import Arrivals, arrivals, gpu_request, tune
from slurm_vgpu.sim.experiment import simulate
from slurm_vgpu.sim.replay import Replay, run
from slurm_vgpu.sim.synthetic import CPUS, RICH_CPUS
from slurm_vgpu.sim.synthetic import synthetic_trace as make_synthetic
from slurm_vgpu.sim.trace import DEFAULT_DIR, DEFAULT_NODES, DEFAULT_PODS, TraceError, load_nodes, load_pods

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
              "deletion_time,scheduled_time\n")


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def pod_row(name, cpu=4000, mem=8192, num=1, milli=500, spec="", qos="LS") -> str:
    return f"{name},{cpu},{mem},{num},{milli},{spec},{qos},Running,0,10,0"


def test_pods_become_requests(tmp_path):
    pods = load_pods(write(tmp_path / "p.csv", POD_HEADER, [
        pod_row("a", milli=460), pod_row("b", num=4, milli=1000, qos="BE"),
        pod_row("c", num=0, milli=0, qos="Burstable"), pod_row("d", spec="V100M16|V100M32"),
    ]))
    a, b, c, d = pods
    assert (a.share, a.gpus, a.slo_class, a.cpu_milli, a.node_memory_mib) == (460, 1, SloClass.LATENCY, 4000, 8192)
    assert (b.share, b.gpus, b.slo_class) == (1000, 4, SloClass.BEST_EFFORT)
    assert (c.share, c.gpus, c.slo_class) == (0, 0, SloClass.THROUGHPUT)
    assert d.models == frozenset({"V100M16", "V100M32"})


def test_nodes_become_gpus_of_capacity_1000(tmp_path):
    cluster = load_nodes(write(tmp_path / "n.csv", NODE_HEADER, ["x,64000,262144,2,T4", "y,8000,1024,0,"]))
    assert [(g.uuid, g.model, g.capacity) for g in cluster.gpus] == [("x/0", "T4", 1000), ("x/1", "T4", 1000)]
    assert [n.cpu_milli_free for n in cluster.nodes] == [64000, 8000]


def test_every_malformed_line_is_reported_with_file_line_and_field(tmp_path):
    path = write(tmp_path / "p.csv", POD_HEADER, [
        pod_row("ok"), pod_row("bad-cpu", cpu="lots"), pod_row("bad-share", milli=1200),
        "short,1000",
    ])
    with pytest.raises(TraceError) as err:
        load_pods(path)
    where = [(p.line, p.field) for p in err.value.problems]
    assert where == [(3, "cpu_milli"), (4, "gpu_milli"), (5, "memory_mib"), (5, "num_gpu"),
                     (5, "gpu_milli")]
    assert f"{path}:3: field 'cpu_milli'" in str(err.value)


def test_a_multi_gpu_pod_list_without_gpu_spec_and_qos_loads_with_their_defaults(tmp_path):
    """The dataset's openb_pod_list_multigpu*.csv have only the five columns every list has."""
    pods = load_pods(write(tmp_path / "p.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n",
                           ["a,8000,16384,2,1000", "b,4000,8192,1,250"]))
    assert [(p.gpus, p.share, p.models, p.slo_class) for p in pods] == [
        (2, 1000, frozenset(), SloClass.THROUGHPUT), (1, 250, frozenset(), SloClass.THROUGHPUT)]


def test_every_missing_column_is_reported_not_only_the_first(tmp_path):
    path = write(tmp_path / "p.csv", "name,memory_mib,gpu_milli\n", ["a,8192,250"])
    with pytest.raises(TraceError) as err:
        load_pods(path)
    assert [(p.line, p.field) for p in err.value.problems] == [(1, "cpu_milli"), (1, "num_gpu")]


def test_the_default_trace_ships_with_the_package_and_loads_without_a_path(monkeypatch):
    monkeypatch.delenv("SLURM_VGPU_TRACES", raising=False)
    result = CliRunner().invoke(simulate_cmd, ["--policies", "first-fit", "--arrival-max", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["gpus"], data["tasks"]) == (6212, 8152)
    assert data["pods"] == "openb_pod_list_default.csv"  # the file, not a path of this machine


def test_the_table_is_whole_when_piped(tmp_path):
    cluster_csv = write(tmp_path / "n.csv", NODE_HEADER, ["x,64000,262144,2,T4"])
    pods_csv = write(tmp_path / "p.csv", POD_HEADER, [pod_row("a", milli=300)])
    result = CliRunner().invoke(simulate_cmd, ["--nodes", str(cluster_csv), "--pods", str(pods_csv),
                                               "--policies", "first-fit"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "policy" in line)
    assert "unallocated GPUs" in header and "fragmentation %" in header and "…" not in result.stdout


def test_cli_turns_a_malformed_trace_into_a_usage_error(tmp_path):
    nodes = write(tmp_path / "n.csv", NODE_HEADER, ["x,64000,262144,two,T4"])
    pods = write(tmp_path / "p.csv", POD_HEADER, [pod_row("a")])
    result = CliRunner().invoke(simulate_cmd, ["--nodes", str(nodes), "--pods", str(pods)])
    assert result.exit_code == 2
    assert f"{nodes}:2: field 'gpu'" in result.output


def request(name, share, gpus=1, cpu=0) -> Request:
    return Request(job_id=name, share=share, gpus=gpus, cpu_milli=cpu)


def test_inflation_stops_on_the_per_gpu_share_quirk():
    """The authors compare total + the next task's *per-GPU* request with the target, so a
    multi-GPU task can carry the total past it."""
    extra = tune([request("two", 1000, gpus=2)], capacity=2000, ratio=1.6, rng=random.Random(0))
    assert len(extra) == 2 and sum(gpu_request(p) for p in extra) == 4000  # > 3200


def test_inflation_appends_copies_after_the_shuffled_trace():
    pods = [request(f"p{i}", 100 * (i % 10 + 1)) for i in range(50)]
    arr = arrivals(pods, capacity=30_000, node_count=4, seed=42, arrival_max=1.3)
    assert arr.original == 50 and sorted(p.job_id for p in arr.pods[:50]) == sorted(p.job_id for p in pods)
    assert all("-tuned-" in p.job_id for p in arr.pods[50:])
    total = sum(gpu_request(p) for p in arr.pods)
    assert total <= 1.3 * 30_000 < total + 1000
    assert sorted(arr.node_order) == [0, 1, 2, 3]
    assert arrivals(pods, 30_000, 4, 42, 1.3) == arr


def test_a_trace_above_the_target_loses_random_tasks():
    pods = [request(f"p{i}", 1000) for i in range(10)]
    kept = tune(pods, capacity=5000, ratio=1.3, rng=random.Random(1))
    assert len(kept) == 6 and set(kept) <= set(pods)


def test_default_trace_inflates_to_130_percent_of_6212_gpus():
    cluster = load_nodes(DEFAULT_DIR / DEFAULT_NODES)
    pods = load_pods(DEFAULT_DIR / DEFAULT_PODS)
    assert (len(cluster.gpus), len(pods)) == (6212, 8152)
    arr = arrivals(pods, cluster.capacity, len(cluster.nodes), 42, 1.3)
    total = sum(gpu_request(p) for p in arr.pods)
    assert arr.original == 8152 and total <= 8_075_600 < total + 1000
    # The paper's 2714 extra tasks for seed 42 come from Go's math/rand stream, which we do not
    # copy; any stream gives about 2,660 +- 50 (mean request 747 milli).
    assert 2500 < len(arr.pods) - 8152 < 2900


def test_figures_of_a_hand_made_run(tmp_path):
    cluster = load_nodes(write(tmp_path / "n.csv", NODE_HEADER, ["x,8000,65536,2,T4"]))
    pods = (request("a", 1000), request("b", 600), request("c", 600))
    arr = Arrivals(pods, 3, (0,))
    traj = run(cluster, arr, PolicyConfig(policy="best-fit"), [(p, 1.0) for p in pods])
    assert traj.arrived == [1000, 1600, 2200] and traj.allocated == [1000, 1600, 1600]
    fig = figures("best-fit", 42, traj, pods, arrival_max=1.1, gpu_count=2)
    assert fig.curve[50] == 50.0 and fig.curve[80] == 80.0 and fig.allocation == 80.0
    assert fig.unallocated_gpus == 0.4
    assert fig.fragmentation_rate == 100.0  # the 400 left fits neither typical request
    assert fig.failed == {"throughput": 1} and fig.arrived == {"throughput": 3}
    assert fig.failed_gpus == 0.6 and fig.failed_cpu_only == 0  # c: 600 of a GPU's 1000


def test_failed_cpu_only_tasks_are_counted_apart_and_ask_no_gpu(tmp_path):
    cluster = load_nodes(write(tmp_path / "n.csv", NODE_HEADER, ["x,8000,65536,2,T4"]))
    pods = (request("gpu", 500, cpu=6000), request("cpu", 0, cpu=4000), request("big", 1000, cpu=4000))
    traj = run(cluster, Arrivals(pods, 3, (0,)), PolicyConfig(policy="fgd"), [(p, 1.0) for p in pods])
    fig = figures("fgd", 42, traj, pods, arrival_max=1.0, gpu_count=2)
    assert sum(fig.failed.values()) == 2 and fig.failed_cpu_only == 1  # CPU ran out for both
    assert fig.failed_gpus == 1.0  # only "big" asked for a GPU


def synthetic_trace(tmp_path: Path, seed: int, nodes: int = 24, pods: int = 260,
                    node_cpus: tuple[int, ...] = CPUS):
    """A small trace of the default trace's kind: 2- to 8-GPU nodes, shares and whole GPUs."""
    return make_synthetic(tmp_path, seed, nodes, pods, node_cpus)


def test_ours_is_fgd_where_cpu_cannot_strand(tmp_path):
    """Where nodes have CPU to spare, ours' score after a slice's packing cost is FGD's, and a
    whole-GPU task (which costs no GPU room) goes to a node FGD scores best."""
    cluster, pods = synthetic_trace(tmp_path, seed=3, nodes=12, pods=40, node_cpus=RICH_CPUS)
    views = group_nodes(cluster.gpus, cluster.nodes)
    workload = [(p, 1.0) for p in pods]
    for pod in pods:
        ctx_ours = build_context(views, PolicyConfig(policy="ours"), workload)
        ctx_fgd = build_context(views, PolicyConfig(policy="fgd"), workload)
        ask = Ask(pod, ctx_ours.config)
        ours = [(evaluate(v, ask, ctx_ours), k) for k, v in enumerate(views)]
        fgd = [evaluate(v, ask, ctx_fgd) for v in views]
        fitting = [(c.score, k) for c, k in ours if c is not None]
        if not fitting:
            continue
        for v in views:
            fit = fitting_positions(v, ask)
            for positions in candidates(v, ask, fit) if fit else ():
                assert (SCORERS["ours"].primary(v, positions, ask, ctx_ours)[1]
                        == SCORERS["fgd"].primary(v, positions, ask, ctx_fgd)[0])
        _, chosen = max(fitting, key=lambda sk: (sk[0], -sk[1]))
        if pod.share >= 1000:
            assert fgd[chosen].score[0] == max(f.score[0] for f in fgd if f is not None)
        views[chosen] = place_on(views[chosen], ours[chosen][0].options[0], ask)


def test_ours_keeps_cpu_for_the_gpus_a_node_still_has(tmp_path):
    """A CPU-only task that FGD puts on the first node (its typical requests still fit there)
    would leave that node's eight GPUs too little CPU; ours takes the node with CPU to spare."""
    cluster = load_nodes(write(tmp_path / "n.csv", NODE_HEADER, [
        "tight,40000,262144,8,G2", "roomy,104000,262144,2,T4"]))
    typical = [(request("gpu", 1000, cpu=4000), 9.0), (request("cpu", 0, gpus=0, cpu=12000), 1.0)]
    task = request("cpu-task", 0, gpus=0, cpu=12000)
    chosen = {}
    for policy in ("fgd", "ours"):
        replay = Replay(cluster, (0, 1), PolicyConfig(policy=policy), typical)
        assert replay.place(task)
        chosen[policy] = [v.name for v in replay.state.views
                          if v.cpu_milli_free < {"tight": 40000, "roomy": 104000}[v.name]]
    assert chosen == {"fgd": ["tight"], "ours": ["roomy"]}


def _allocations(tmp_path: Path, traces: range, node_cpus: tuple[int, ...]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"fgd": [], "ours": []}
    for seed in traces:
        cluster, pods = synthetic_trace(tmp_path, seed, nodes=40, pods=450, node_cpus=node_cpus)
        for fig in simulate(cluster, pods, ["fgd", "ours"], [42]):
            out[fig.policy].append(fig.allocation)
    return out


def test_ours_packs_more_than_fgd_on_every_cpu_scarce_synthetic_trace(tmp_path):
    """On traces whose nodes run out of CPU (as the Alibaba trace's 8-GPU nodes do), counting the
    GPUs that CPU can no longer feed wins on each trace (docs/simulator.md)."""
    alloc = _allocations(tmp_path, range(6), CPUS)
    assert all(o > f for o, f in zip(alloc["ours"], alloc["fgd"])), alloc


def test_ours_packs_at_least_as_much_as_fgd_where_cpu_is_plentiful(tmp_path):
    """With CPU to spare ours' score is FGD's; its tie-breaks may not cost allocation overall."""
    alloc = _allocations(tmp_path, range(10), RICH_CPUS)
    assert sum(alloc["ours"]) >= sum(alloc["fgd"]), alloc


@pytest.mark.parametrize("policy", ["random", "best-fit", "fgd", "ours"])
def test_a_task_is_dropped_only_when_no_node_could_take_it(tmp_path, policy):
    """The replay's grouped evaluation neither drops a task some node could host nor places one
    that none could (checked against every node, one by one)."""
    cluster, pods = synthetic_trace(tmp_path, seed=5, nodes=10, pods=160)
    arr = arrivals(pods, cluster.capacity, len(cluster.nodes), 42, 1.3)
    replay = Replay(cluster, arr.node_order, PolicyConfig(policy=policy), [(p, 1.0) for p in pods])
    outcomes = set()
    for pod in arr.pods:
        ask = Ask(pod, replay.config, replay.ctx.reference_speed)
        fits = any(evaluate(v, ask, replay.ctx) is not None for v in replay.state.views)
        assert replay.place(pod) == fits
        outcomes.add(fits)
    assert outcomes == {True, False}  # the trace overfills the cluster


def test_cli_json_has_every_figure_per_policy_and_seed(tmp_path):
    cluster_csv = write(tmp_path / "n.csv", NODE_HEADER, ["x,64000,262144,4,T4", "y,64000,262144,2,A10"])
    pods_csv = write(tmp_path / "p.csv", POD_HEADER, [pod_row(f"p{i}", milli=m)
                                                     for i, m in enumerate([300, 700, 1000, 500, 250])])
    plot = tmp_path / "plot.png"
    result = CliRunner().invoke(simulate_cmd, [
        "--nodes", str(cluster_csv), "--pods", str(pods_csv), "--policies", "first-fit,ours",
        "--seeds", "2", "--users", "2", "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(r["policy"], r["seed"]) for r in data["runs"]] == [
        ("first-fit", 42), ("ours", 42), ("first-fit", 43), ("ours", 43)]
    assert {"allocation", "curve", "fragmentation_rate", "unallocated_gpus", "failed"} <= set(data["runs"][0])
    assert set(data["summary"]) == {"first-fit", "ours"}
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_cli_refuses_an_unknown_policy():
    result = CliRunner().invoke(simulate_cmd, ["--policies", "fgd,tetris"])
    assert result.exit_code == 2 and "unknown policy tetris" in result.output
