"""The cycle's grouped evaluation (slurm_vgpu.policy.cluster) decides exactly as scoring every node
one by one, which is what this file's reference does."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vgpu.policy import (
    POLICIES,
    Blocked,
    Decision,
    GpuState,
    NodeState,
    PlacementResult,
    PolicyConfig,
    Request,
    SloClass,
    place_slices,
)
from slurm_vgpu.policy.apply import place_on
from slurm_vgpu.policy.placement import build_context, uses_random_ties
from slurm_vgpu.policy.rules import Ask, could_wait_for, explain
from slurm_vgpu.policy.scoring import evaluate
from slurm_vgpu.policy.select import pick_node, pick_option, rng_for
from slurm_vgpu.policy.view import group_nodes

MODELS = ("H100", "A100", "T4")


def reference(gpus, requests, config, nodes=(), workload=()) -> PlacementResult:
    """Every node scored for every request, one group per node, no caches."""
    views = group_nodes(gpus, nodes)
    ctx = build_context(views, config, workload or [(r, 1.0) for r in requests])
    reserved: dict[str, str] = {}
    decisions, blocked = [], []
    for req in requests:
        ask = Ask(req, config, ctx.reference_speed, dict(reserved))
        groups, choices = [], []
        for rank, node in enumerate(views):
            choice = evaluate(node, ask, ctx)
            if choice is not None:
                groups.append((choice.score, (rank,)))
                choices.append(choice)
        if not groups:
            verdict = explain(views, ask)
            blocked.append(verdict.blocked)
            free = [g for v in views for g in v.gpus if verdict.waits_for_room and g.uuid not in reserved
                    and could_wait_for(g, ask)]
            if req.waited_s > config.starvation_wait_s and req.gpus == 1 and free:
                reserved[max(free, key=lambda g: (g.free, g.memory_mib - g.memory_used_mib)).uuid] = req.job_id
            continue
        rng = rng_for(config.seed, req.job_id) if uses_random_ties(config) else None
        gi, rank = pick_node(groups, rng)
        positions = pick_option(choices[gi].options, rng)
        node = views[rank]
        views[rank] = place_on(node, positions, ask)
        decisions.append(Decision(req.job_id, node.name, tuple(node.gpus[i].uuid for i in positions),
                                  ask.units(node.gpus[positions[0]]) if positions else 0))
    return PlacementResult(tuple(decisions), tuple(blocked), reserved)


@st.composite
def clusters(draw):
    """Nodes drawn from a small palette of GPU states, so that many nodes and GPUs are alike."""
    palette = draw(st.lists(st.tuples(
        st.sampled_from(MODELS), st.sampled_from([0, 0, 0, 30, 50, 70, 100]), st.sampled_from([1, 2]),
        st.sampled_from([(), (SloClass.THROUGHPUT,), (SloClass.LATENCY, SloClass.BEST_EFFORT)]),
        st.sampled_from([True, True, True, False]), st.sampled_from([1.0, 1.0, 2.0]),
        st.sampled_from([0, 0, 30000]), st.sampled_from([(), (), (1,), (2,)])), min_size=1, max_size=4))
    gpus, nodes = [], []
    for n in range(draw(st.integers(1, 7))):
        name = f"n{n}"
        for i in range(draw(st.integers(1, 4))):
            model, used, user, classes, available, speed, mem_used, uncapped = draw(st.sampled_from(palette))
            clients = draw(st.sampled_from([None, 48, 1, 2, 3]))  # the most slices its MPS server takes
            gpus.append(GpuState(uuid=f"{name}-{i}", node=name, index=i, model=model, memory_mib=40960,
                                 speed=speed, used=used, memory_used_mib=mem_used if used else 0,
                                 user=user if used else None, classes=classes if used else (),
                                 available=available,
                                 capped_users=frozenset({user} if used and mem_used else ()),
                                 uncapped_users=frozenset(uncapped if used else ()), max_clients=clients))
        if draw(st.booleans()):
            nodes.append(NodeState(name, draw(st.sampled_from([0, 8000, 64000])),
                                   draw(st.sampled_from([0, 65536]))))
    return gpus, nodes


requests = st.lists(st.builds(
    Request,
    job_id=st.uuids().map(str),
    share=st.sampled_from([10, 30, 50, 70, 100]) | st.integers(1, 100),
    user=st.sampled_from([1, 2]),
    slo_class=st.sampled_from(list(SloClass)),
    memory_mib=st.none() | st.sampled_from([4096, 20480]),
    models=st.just(frozenset()) | st.frozensets(st.sampled_from(MODELS), max_size=2),
    gpus=st.sampled_from([1, 1, 1, 1, 0, 2]),
    cpu_milli=st.sampled_from([0, 0, 4000, 16000]),
    waited_s=st.sampled_from([0.0, 0.0, 0.0, 10_000.0]),
    nodes=st.none() | st.none() | st.frozensets(st.sampled_from([f"n{n}" for n in range(8)]), max_size=3),
), max_size=14, unique_by=lambda r: r.job_id)

configs = st.builds(PolicyConfig, policy=st.sampled_from(POLICIES), seed=st.integers(0, 3),
                    multi_user=st.booleans(), latency_max_cotenants=st.integers(0, 2),
                    reference_model=st.none() | st.sampled_from(MODELS))


@settings(max_examples=400, deadline=None)
@given(clusters(), requests, configs, st.booleans())
def test_grouped_evaluation_decides_as_scoring_every_node(cluster, reqs, config, typical):
    gpus, nodes = cluster
    workload = [(r, 1.0) for r in reqs[:3]] if typical else ()
    assert place_slices(gpus, reqs, config, nodes, workload) == reference(gpus, reqs, config, nodes, workload)


def test_a_reserved_gpu_is_left_to_its_holder_by_the_grouped_path():
    gpus = [GpuState(f"n{n}-0", f"n{n}", 0, "H100", 81920, used=50) for n in range(3)]
    reqs = [Request("big", 80, waited_s=1e6), Request("a", 30), Request("b", 30), Request("c", 30)]
    result = place_slices(gpus, reqs, PolicyConfig())
    assert result == reference(gpus, reqs, PolicyConfig())
    assert result.reserved == {"n0-0": "big"} and all(d.node != "n0" for d in result.decisions)
    assert isinstance(result.blocked[0], Blocked)
