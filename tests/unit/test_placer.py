"""A placer kept across cycles (the daemon's) decides exactly as a fresh one given the same
inventory, whatever changed in between: its own decisions, slices that ended, drained GPUs, node
resources, nodes that came and went."""
from __future__ import annotations

import dataclasses
import gc
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vgpu.policy import GpuState, NodeState, PolicyConfig, Request, place_slices
from slurm_vgpu.placement.cycle import build_placer, collector_paused
from slurm_vgpu.policy.placement import Placer

from .test_policy_fast import clusters, configs, requests


def applied(gpus: list[GpuState], nodes: list[NodeState], result, reqs) -> tuple[list, list]:
    """The inventory as the daemon reads it back once the cycle's decisions are committed."""
    by_id = {r.job_id: r for r in reqs}
    where = {g.uuid: i for i, g in enumerate(gpus)}
    gpus, nodes = list(gpus), list(nodes)
    for d in result.decisions:
        req = by_id[d.job_id]
        for uuid in d.gpu_uuids:
            g = gpus[where[uuid]]
            capped = req.memory_mib is not None
            gpus[where[uuid]] = dataclasses.replace(
                g, used=g.used + (g.capacity if req.gpus > 1 else d.share),
                memory_used_mib=g.memory_used_mib + (req.memory_mib or 0),
                user=req.user if g.user is None else g.user, classes=(*g.classes, req.slo_class),
                capped_users=g.capped_users | {req.user} if capped else g.capped_users,
                uncapped_users=g.uncapped_users if capped else g.uncapped_users | {req.user})
        nodes = [dataclasses.replace(n, cpu_milli_free=n.cpu_milli_free - req.cpu_milli,
                                     memory_mib_free=n.memory_mib_free - req.node_memory_mib)
                 if n.name == d.node and n.cpu_milli_free is not None else n for n in nodes]
    return gpus, nodes


@st.composite
def outside_changes(draw, gpus: list[GpuState], nodes: list[NodeState]):
    """What else happens between two cycles: slices end, GPUs drain, a node leaves or joins."""
    gpus = list(gpus)
    for i in draw(st.lists(st.integers(0, len(gpus) - 1), max_size=3)):
        kind = draw(st.sampled_from(["ended", "drained", "back"]))
        g = gpus[i]
        gpus[i] = (dataclasses.replace(g, used=0, memory_used_mib=0, user=None, classes=(), capped_users=frozenset(),
                                       uncapped_users=frozenset()) if kind == "ended"
                   else dataclasses.replace(g, available=kind == "back"))
    if draw(st.integers(0, 9)) == 0 and len({g.node for g in gpus}) > 1:
        gone = gpus[-1].node
        gpus = [g for g in gpus if g.node != gone]
        nodes = [n for n in nodes if n.name != gone]
    elif draw(st.integers(0, 9)) == 0 and all(g.node != "new" for g in gpus):
        gpus.append(GpuState("new-0", "new", 0, "A100", 40960))
    return gpus, nodes


@settings(max_examples=200, deadline=None)
@given(clusters(), st.lists(requests, min_size=1, max_size=4), configs, st.data())
def test_a_kept_placer_decides_as_a_fresh_one_cycle_after_cycle(cluster, cycles, config, data):
    gpus, nodes = list(cluster[0]), list(cluster[1])
    workload = [(Request("typical", 30), 3.0), (Request("typical-big", 70, cpu_milli=4000), 1.0)]
    placer = Placer(gpus, config, nodes, workload)
    for reqs in cycles:
        placer.sync(gpus, nodes)
        kept = placer.place(reqs)
        assert kept == place_slices(gpus, reqs, config, nodes, workload)
        gpus, nodes = applied(gpus, nodes, kept, reqs)
        assert placer.sync(gpus, nodes) == 0  # its own decisions are already in its view
        gpus, nodes = data.draw(outside_changes(gpus, nodes))


def test_a_kept_placer_rescales_when_its_own_decisions_moved_the_most_free_cpu():
    """Best-fit weighs CPU left over against the most free CPU of any node: once the placer's own
    decisions took CPU on that node, a sync with nothing else changed must read the scale anew, as
    a fresh placer does (a CPU-only task went to the other node when it did not)."""
    gpus = [GpuState("n0-0", "n0", 0, "H100", 40960, used=20, user=1), GpuState("n1-0", "n1", 0, "H100", 40960)]
    nodes = [NodeState("n1", 64000, 0)]  # n0 does not report its CPU
    config = PolicyConfig(policy="best-fit")
    placer = Placer(gpus, config, nodes)
    first = [Request("a", 90, user=1, cpu_milli=32000, nodes=frozenset({"n1"}))]
    gpus, nodes = applied(gpus, nodes, placer.place(first), first)
    assert nodes == [NodeState("n1", 32000, 0)] and placer.sync(gpus, nodes) == 0
    cpu_only = [Request("b", 10, user=1, gpus=0)]
    assert placer.place(cpu_only) == place_slices(gpus, cpu_only, config, nodes)
    assert place_slices(gpus, cpu_only, config, nodes).decisions[0].node == "n0"


def test_sync_regroups_only_the_nodes_that_changed():
    gpus = [GpuState(f"n{n}-{i}", f"n{n}", i, "H100", 81920) for n in range(4) for i in range(2)]
    placer = Placer(gpus, PolicyConfig())
    assert placer.sync(gpus) == 0
    gpus[3] = dataclasses.replace(gpus[3], used=40, user=7)
    assert placer.sync(gpus) == 1
    assert placer.state.views[1].gpus[1].used == 40


def test_a_rebuilt_placer_frees_the_one_it_replaces():
    """The daemon rebuilds its placer every WorkloadRefresh; a frozen placer that survived its
    replacement would leak its caches each time."""
    gpus = [GpuState(f"n{n}-{i}", f"n{n}", i, "H100", 81920) for n in range(4) for i in range(2)]
    try:
        old = build_placer(gpus, PolicyConfig(), [Request("typical", 30)])
        old.place([Request("a", 30), Request("b", 100)])
        state = weakref.ref(old.state)
        del old
        build_placer(gpus, PolicyConfig(), [Request("typical", 30)])
        assert state() is None
    finally:
        gc.unfreeze()


class _Cyclic:
    pass


def test_a_cycle_runs_without_the_collector_and_its_cyclic_garbage_is_collected_after_it():
    with collector_paused():
        assert not gc.isenabled()
        garbage = _Cyclic()
        garbage.me = garbage  # only the collector frees a reference cycle
        gone = weakref.ref(garbage)
        del garbage
        assert gone() is not None
    assert gc.isenabled() and gone() is None
