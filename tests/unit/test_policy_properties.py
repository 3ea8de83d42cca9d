"""Invariants of place_slices over generated clusters and request streams."""
from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vgpu.policy import POLICIES, GpuState, NodeState, PolicyConfig, Request, SloClass, place_slices

MODELS = ("H100", "A100", "T4")


@st.composite
def clusters(draw):
    gpus, nodes = [], []
    for n in range(draw(st.integers(1, 4))):
        name = f"n{n}"
        for i in range(draw(st.integers(1, 4))):
            used = draw(st.integers(0, 100))
            user = draw(st.sampled_from([1, 2])) if used else None
            capped = used and draw(st.booleans())
            gpus.append(GpuState(
                uuid=f"{name}-{i}", node=name, index=i, model=draw(st.sampled_from(MODELS)),
                memory_mib=draw(st.sampled_from([16384, 40960, 81920])), used=used,
                memory_used_mib=4096 if capped else 0, user=user,
                capped_users=frozenset({user} if capped else ()),
                uncapped_users=frozenset({user} if used and not capped else ()),
                classes=tuple(draw(st.lists(st.sampled_from(list(SloClass)), max_size=3))) if used else (),
                available=draw(st.sampled_from([True, True, False])),
                speed=draw(st.sampled_from([0.5, 1.0, 2.0])),
            ))
        if draw(st.booleans()):
            nodes.append(NodeState(name, draw(st.integers(0, 64000)), draw(st.integers(0, 262144))))
    return gpus, nodes


requests = st.lists(st.builds(
    Request,
    job_id=st.uuids().map(str),
    share=st.integers(1, 100),
    user=st.sampled_from([1, 2, 3]),
    slo_class=st.sampled_from(list(SloClass)),
    memory_mib=st.none() | st.sampled_from([4096, 20480, 90000]),
    models=st.frozensets(st.sampled_from(MODELS + ("h100", "V100")), max_size=2),
    cpu_milli=st.integers(0, 16000),
    node_memory_mib=st.integers(0, 65536),
    waited_s=st.sampled_from([0.0, 10_000.0]),
), max_size=10, unique_by=lambda r: r.job_id)

configs = st.builds(PolicyConfig, policy=st.sampled_from(POLICIES), seed=st.integers(0, 3),
                    multi_user=st.booleans(), latency_max_cotenants=st.integers(0, 3),
                    reference_model=st.none() | st.sampled_from(MODELS))


@settings(max_examples=80, deadline=None)
@given(clusters(), requests, configs)
def test_placements_respect_every_hard_rule(cluster, reqs, config):
    gpus, nodes = cluster
    result = place_slices(gpus, reqs, config, nodes)
    by_uuid = {g.uuid: g for g in gpus}
    by_job = {r.job_id: r for r in reqs}
    used = {g.uuid: g.used for g in gpus}
    mem = {g.uuid: g.memory_used_mib for g in gpus}
    users = {g.uuid: {g.user} - {None} for g in gpus}
    capped = {g.uuid: set(g.capped_users) for g in gpus}
    uncapped = {g.uuid: set(g.uncapped_users) for g in gpus}
    order = {r.job_id: k for k, r in enumerate(reqs)}
    for d in result.decisions:
        r = by_job[d.job_id]
        assert len(d.gpu_uuids) == 1  # one GPU per slice, never spanning
        (uuid,) = d.gpu_uuids
        g = by_uuid[uuid]
        assert g.node == d.node and g.available
        holder = result.reserved.get(uuid)
        assert holder is None or order[holder] > order[d.job_id]  # reserved GPUs stay free after
        assert not r.models or g.model.lower() in {m.lower() for m in r.models}
        used[uuid] += d.share
        mem[uuid] += r.memory_mib or 0
        users[uuid].add(r.user)
        assert used[uuid] <= g.capacity  # never over capacity
        assert r.memory_mib is None or mem[uuid] <= g.memory_mib
        (capped if r.memory_mib else uncapped)[uuid].add(r.user)
        # no slice without a memory cap beside another user's capped slice
        assert not (capped[uuid] and uncapped[uuid]) or capped[uuid] | uncapped[uuid] == {r.user}
        if not config.multi_user:
            assert len(users[uuid] | ({g.user} - {None})) == 1  # never two users
    cpu = defaultdict(int)
    for d in result.decisions:
        cpu[d.node] += by_job[d.job_id].cpu_milli
    for n in nodes:
        assert n.cpu_milli_free is None or cpu[n.name] <= n.cpu_milli_free


@settings(max_examples=60, deadline=None)
@given(clusters(), requests, configs)
def test_every_request_is_decided_or_blocked_exactly_once(cluster, reqs, config):
    gpus, nodes = cluster
    result = place_slices(gpus, reqs, config, nodes)
    seen = [d.job_id for d in result.decisions] + [b.job_id for b in result.blocked]
    assert sorted(seen) == sorted(r.job_id for r in reqs)
    assert all(b.reason for b in result.blocked)


@settings(max_examples=60, deadline=None)
@given(clusters(), requests, configs)
def test_same_input_same_result(cluster, reqs, config):
    gpus, nodes = cluster
    assert place_slices(gpus, reqs, config, nodes) == place_slices(gpus, reqs, config, nodes)


@settings(max_examples=60, deadline=None)
@given(clusters(), requests, configs)
def test_never_means_no_empty_gpu_could_take_it(cluster, reqs, config):
    """A request marked never must also fail on the same cluster emptied and undrained."""
    gpus, nodes = cluster
    empty = [GpuState(g.uuid, g.node, g.index, g.model, g.memory_mib, g.speed, g.capacity)
             for g in gpus]
    result = place_slices(gpus, reqs, config, nodes)
    for b in result.blocked:
        if b.never:
            r = next(r for r in reqs if r.job_id == b.job_id)
            alone = place_slices(empty, [r], config)
            assert not alone.decisions
