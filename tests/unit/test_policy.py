"""The placement policy's rules and reasons, as users and the daemon depend on them."""
from __future__ import annotations

from dataclasses import replace

import pytest

from slurm_vgpu.policy import (
    POLICIES, GpuState, NodeState, PolicyConfig, Request, SloClass, place_slices,
)

GIB = 1024


def gpu(node="n0", index=0, model="H100", memory_gib=80, **kw) -> GpuState:
    return GpuState(uuid=f"{node}-{index}", node=node, index=index, model=model,
                    memory_mib=memory_gib * GIB, **kw)


def req(job="j", share=30, **kw) -> Request:
    return Request(job_id=job, share=share, **kw)


def only_blocked(result):
    assert not result.decisions
    (blocked,) = result.blocked
    return blocked


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_places_a_fitting_slice_on_one_gpu(policy):
    result = place_slices([gpu(index=0), gpu(index=1)], [req(share=60)], PolicyConfig(policy=policy))
    (d,) = result.decisions
    assert d.node == "n0" and len(d.gpu_uuids) == 1 and d.share == 60


def test_later_requests_see_earlier_decisions_in_the_same_cycle():
    result = place_slices([gpu()], [req("a", 70), req("b", 40)], PolicyConfig())
    assert [d.job_id for d in result.decisions] == ["a"]
    assert result.blocked[0].reason == "needs 40% of one GPU; the most free on any eligible GPU is 30%"
    assert result.blocked[0].never is False


def test_a_slice_never_spans_gpus_even_when_their_sum_would_fit():
    gpus = [gpu(index=0, used=50), gpu(index=1, used=50)]
    assert only_blocked(place_slices(gpus, [req(share=80)], PolicyConfig())).never is False


def test_unknown_model_is_never_satisfiable():
    b = only_blocked(place_slices([gpu()], [req(models=frozenset({"A100"}))], PolicyConfig()))
    assert b.reason == "no GPU of model A100 in the cluster" and b.never


def test_model_constraint_is_case_insensitive():
    result = place_slices([gpu(model="T4"), gpu("n1", model="H100")],
                          [req(models=frozenset({"h100"}))], PolicyConfig())
    assert result.decisions[0].node == "n1"


def test_a_request_restricted_to_some_nodes_lands_on_them_or_says_which_it_may_use():
    gpus = [gpu("n0"), gpu("n1"), gpu("n2", model="T4")]
    placed = place_slices(gpus, [req(nodes=frozenset({"n1"}))], PolicyConfig())
    assert [d.node for d in placed.decisions] == ["n1"]
    b = only_blocked(place_slices(gpus, [req(models=frozenset({"h100"}), nodes=frozenset({"n2"}))],
                                  PolicyConfig()))
    assert b.reason == "no fitting GPU on the nodes it may still use (n2)" and not b.never
    b = only_blocked(place_slices(gpus, [req(nodes=frozenset())], PolicyConfig()))
    assert b.reason == "Slurm refused its pin on every node with a fitting GPU"


def test_memory_above_every_gpu_is_never_satisfiable():
    b = only_blocked(place_slices([gpu(memory_gib=80), gpu(index=1, memory_gib=40)],
                                  [req(memory_mib=90 * GIB)], PolicyConfig()))
    assert b.reason == "memory 90 GiB exceeds every GPU (largest: 80 GiB)" and b.never


def test_memory_in_use_blocks_until_freed():
    b = only_blocked(place_slices([gpu(memory_used_mib=76 * GIB)], [req(memory_mib=8 * GIB)],
                                  PolicyConfig()))
    assert b.reason == ("needs 8 GiB of GPU memory; the most free on any eligible GPU with room "
                        "is 4 GiB")
    assert not b.never


def test_drained_gpus_are_not_used_and_say_so():
    b = only_blocked(place_slices([gpu(available=False)], [req()], PolicyConfig()))
    assert b.reason == "every GPU is drained or down" and not b.never


def test_one_unix_user_per_gpu_without_multi_user_mps():
    gpus = [gpu(used=10, user=1000)]
    b = only_blocked(place_slices(gpus, [req(user=2000)], PolicyConfig()))
    assert b.reason == "every GPU with room runs another user's MPS server"
    assert place_slices(gpus, [req(user=1000)], PolicyConfig()).decisions
    assert place_slices(gpus, [req(user=2000)], PolicyConfig(multi_user=True)).decisions


MULTI_USER = PolicyConfig(multi_user=True)


def test_a_slice_without_a_memory_cap_never_joins_another_users_capped_slices():
    """It may use all of the GPU's memory, so the other user's cap could not be kept (the capacity
    guard's rule too); the same user's slices share one MPS server and may mix."""
    gpus = [gpu(used=10, memory_used_mib=4 * GIB, capped_users=frozenset({1}))]
    b = only_blocked(place_slices(gpus, [req(user=2)], MULTI_USER))
    assert b.reason == ("has no GPU memory cap, so it may use all of a GPU's memory, and every eligible GPU "
                        "with room holds another user's capped slices; give it a cap (--vgpu-mem=SIZE) to "
                        "share one") and not b.never
    assert place_slices(gpus, [req(user=2, memory_mib=8 * GIB)], MULTI_USER).decisions
    assert place_slices(gpus, [req(user=1)], MULTI_USER).decisions


def test_a_capped_slice_never_joins_another_users_slice_without_a_cap():
    gpus = [gpu(used=10, uncapped_users=frozenset({1}))]
    b = only_blocked(place_slices(gpus, [req(user=2, memory_mib=8 * GIB)], MULTI_USER))
    assert b.reason == ("every eligible GPU with room holds another user's slice without a memory cap, which "
                        "may use all of the GPU's memory")
    assert place_slices(gpus, [req(user=2)], MULTI_USER).decisions  # neither was promised memory
    assert place_slices(gpus, [req(user=1, memory_mib=8 * GIB)], MULTI_USER).decisions


def test_what_fits_one_user_is_not_taken_to_fit_another():
    """Two GPUs alike: the first request's verdict on them must not stand for the second's user."""
    held = gpu(index=0, used=10, uncapped_users=frozenset({1}))
    gpus = [held, gpu(index=1, used=10, uncapped_users=frozenset({1})), gpu(index=2)]
    mine, theirs = req("mine", memory_mib=4 * GIB, user=1), req("theirs", memory_mib=4 * GIB, user=2)
    result = place_slices(gpus, [mine, theirs], MULTI_USER)
    assert [d.gpu_uuids for d in result.decisions] == [("n0-0",), ("n0-2",)]


def test_a_cycles_own_decisions_count_for_the_memory_rules():
    config = PolicyConfig(multi_user=True, policy="first-fit")
    gpus = [gpu(index=0, memory_gib=16), gpu(index=1, memory_gib=16)]
    reqs = [req("a", 10, user=1, memory_mib=12 * GIB), req("b", 10, user=2, memory_mib=8 * GIB),
            req("c", 10, user=3), req("d", 10, user=2, memory_mib=4 * GIB)]
    result = place_slices(gpus, reqs, config)
    assert [(d.job_id, d.gpu_uuids) for d in result.decisions] == [("a", ("n0-0",)), ("b", ("n0-1",)),
                                                                   ("d", ("n0-0",))]
    assert [b.job_id for b in result.blocked] == ["c"]  # both GPUs hold another user's capped slices


def test_a_gpu_takes_no_more_slices_than_its_mps_server_takes_clients_and_the_rest_wait_for_room():
    """48 one-unit slices fill a GPU's MPS server though 52 units stay free; the 49th waits (never
    cancelled: slices end), also when this cycle's own decisions filled it."""
    full = gpu(used=48, classes=(SloClass.THROUGHPUT,) * 48, user=1, max_clients=48)
    b = only_blocked(place_slices([full], [req(share=1, user=1)], PolicyConfig()))
    assert b.reason == "every eligible GPU with room already holds 48 slices, the most its MPS server takes"
    assert not b.never
    result = place_slices([gpu(max_clients=48)], [req(f"j{i}", share=1) for i in range(60)], PolicyConfig())
    assert len(result.decisions) == 48
    assert {b.reason for b in result.blocked} == {
        "every eligible GPU with room already holds 48 slices, the most its MPS server takes"}
    assert [d.job_id for d in result.decisions] == [f"j{i}" for i in range(48)]


def test_the_client_limit_reason_names_each_limit_and_other_gpus_still_take_slices():
    old = gpu(index=0, model="P100", used=16, classes=(SloClass.THROUGHPUT,) * 16, max_clients=16)
    new = gpu(index=1, used=48, classes=(SloClass.THROUGHPUT,) * 48, max_clients=48)
    b = only_blocked(place_slices([old, new], [req(share=1)], PolicyConfig()))
    assert b.reason == "every eligible GPU with room already holds 16 to 48 slices, the most its MPS server takes"
    (d,) = place_slices([old, new, gpu(index=2, max_clients=48)], [req(share=1)], PolicyConfig()).decisions
    assert d.gpu_uuids == ("n0-2",)
    # GPUs without a limit (a trace replay's) take slices while units are free
    assert len(place_slices([gpu()], [req(f"j{i}", share=1) for i in range(100)], PolicyConfig()).decisions) == 100


def test_a_request_starving_behind_the_client_limit_reserves_the_gpu_it_waits_for():
    full = gpu(used=48, classes=(SloClass.THROUGHPUT,) * 48, max_clients=48)
    result = place_slices([full], [req("old", share=1, waited_s=1e6)], PolicyConfig())
    assert result.reserved == {"n0-0": "old"}


def test_user_reason_names_the_requested_model():
    b = only_blocked(place_slices([gpu(used=10, user=1)], [req(user=2, models=frozenset({"H100"}))],
                                  PolicyConfig()))
    assert b.reason == "every H100 GPU with room runs another user's MPS server"


def test_a_latency_slice_keeps_its_gpu_to_few_cotenants():
    crowded = [gpu(used=30, classes=(SloClass.LATENCY, SloClass.THROUGHPUT, SloClass.THROUGHPUT))]
    b = only_blocked(place_slices(crowded, [req(share=10)], PolicyConfig(latency_max_cotenants=2)))
    assert b.reason == "every GPU with room already holds more than 2 slices beside a latency slice"
    busy = [gpu(used=30, classes=(SloClass.THROUGHPUT,) * 3)]
    assert not place_slices(busy, [req(share=10, slo_class=SloClass.LATENCY)],
                            PolicyConfig(latency_max_cotenants=2)).decisions
    assert place_slices(busy, [req(share=10)], PolicyConfig(latency_max_cotenants=2)).decisions


def test_best_effort_fills_a_used_gpu_and_avoids_latency_slices():
    gpus = [gpu(index=0, used=20, classes=(SloClass.LATENCY,)),
            gpu(index=1, used=20, classes=(SloClass.THROUGHPUT,)), gpu(index=2)]
    (d,) = place_slices(gpus, [req(share=10, slo_class=SloClass.BEST_EFFORT)], PolicyConfig()).decisions
    assert d.gpu_uuids == ("n0-1",)


def test_node_cpu_and_memory_are_respected():
    nodes = [NodeState("n0", cpu_milli_free=2000, memory_mib_free=4 * GIB)]
    b = only_blocked(place_slices([gpu()], [req(cpu_milli=4000)], PolicyConfig(), nodes))
    assert b.reason == "needs 4 CPUs on a node with a fitting GPU; the most free is 2"
    b = only_blocked(place_slices([gpu()], [req(node_memory_mib=8 * GIB)], PolicyConfig(), nodes))
    assert b.reason == "needs 8 GiB of node memory beside a fitting GPU; the most free is 4 GiB"


def test_multi_gpu_tasks_take_whole_free_gpus_on_one_node():
    gpus = [gpu("a", 0), gpu("a", 1, used=10), gpu("b", 0), gpu("b", 1)]
    (d,) = place_slices(gpus, [req(share=100, gpus=2)], PolicyConfig()).decisions
    assert d.node == "b" and len(d.gpu_uuids) == 2 and d.share == 100
    b = only_blocked(place_slices(gpus[:2], [req(share=100, gpus=2)], PolicyConfig()))
    assert b.reason == "needs 2 whole free GPUs on one node; the most on any eligible node is 1"
    b = only_blocked(place_slices(gpus[:2], [req(share=100, gpus=3)], PolicyConfig()))
    assert b.never and b.reason == "needs 3 GPUs of one node; the largest eligible node has 2"


def test_reference_units_convert_by_speed():
    config = PolicyConfig(reference_model="A100")
    gpus = [gpu("slow", model="T4", speed=0.25), gpu("ref", model="A100", speed=1.0)]
    (d,) = place_slices(gpus[:1] + gpus[1:], [req(share=20, models=frozenset({"T4"}))], config).decisions
    assert d.node == "slow" and d.share == 80  # ceil(20 * 1.0 / 0.25)
    b = only_blocked(place_slices(gpus[:1], [req(share=30)], config))
    assert b.never and b.reason == ("needs 120% of one GPU after conversion from A100 units; "
                                    "a slice never spans GPUs")


def test_reference_units_round_up_not_by_float_noise():
    config = PolicyConfig(reference_model="X")
    gpus = [gpu(model="X", speed=2.0, index=0), gpu(model="Y", speed=3.0, index=1)]
    (d,) = place_slices(gpus, [req(share=30, models=frozenset({"Y"}))], config).decisions
    assert d.share == 20


def test_a_starving_request_reserves_the_roomiest_gpu_against_later_ones():
    gpus = [gpu(index=0, used=60), gpu(index=1, used=50)]
    big = req("big", 80, waited_s=3600)
    small = req("small", 30)
    result = place_slices(gpus, [big, small], PolicyConfig(starvation_wait_s=600))
    assert result.reserved == {"n0-1": "big"}
    assert [d.gpu_uuids for d in result.decisions] == [("n0-0",)]


def test_requests_alike_that_starve_each_reserve_their_own_gpu_and_the_rest_wait_with_the_reason():
    """Requests like one that found no room are not looked at again in the call; each that starves
    still reserves a GPU, the next roomiest once a decision changed the cluster."""
    gpus = [gpu(index=i, used=u) for i, u in enumerate((70, 60, 50, 90))]
    backlog = [req("old1", 80, waited_s=3600), req("old2", 80, waited_s=3600), req("fits", 30),
               req("old3", 80, waited_s=3600), req("new", 80)]
    result = place_slices(gpus, backlog, PolicyConfig(starvation_wait_s=600))
    assert [(d.job_id, d.gpu_uuids) for d in result.decisions] == [("fits", ("n0-0",))]
    assert result.reserved == {"n0-2": "old1", "n0-1": "old2", "n0-3": "old3"}
    reasons = {b.job_id: b.reason for b in result.blocked}
    assert reasons["new"] == reasons["old1"] == "needs 80% of one GPU; the most free on any eligible GPU is 50%"


def test_a_reservation_is_recomputed_only_while_the_request_starves():
    gpus = [gpu(index=0, used=50)]
    result = place_slices(gpus, [req("big", 80, waited_s=10), req("small", 30)],
                          PolicyConfig(starvation_wait_s=600))
    assert result.reserved == {} and result.decisions[0].job_id == "small"


def test_reserved_gpus_tell_the_blocked_request_who_holds_them():
    gpus = [gpu(index=0, used=50)]
    result = place_slices(gpus, [req("big", 80, waited_s=3600), req("small", 30)],
                          PolicyConfig(starvation_wait_s=600))
    assert result.blocked[-1].reason == "every fitting GPU is reserved for job big, which has waited longest"


def test_a_never_satisfiable_request_reserves_nothing():
    result = place_slices([gpu()], [req(models=frozenset({"A100"}), waited_s=1e6)], PolicyConfig())
    assert result.reserved == {}


@pytest.mark.parametrize("policy", POLICIES)
def test_same_input_same_decisions(policy):
    gpus = [gpu(n, i, used=(7 * i + 3 * len(n)) % 60) for n in ("a", "bb", "ccc") for i in range(4)]
    reqs = [req(f"j{k}", 10 + 7 * k % 50) for k in range(12)]
    config = PolicyConfig(policy=policy, seed=7)
    assert place_slices(gpus, reqs, config) == place_slices(gpus, reqs, config)


def test_random_policy_depends_on_the_seed():
    gpus = [gpu(f"n{i}", 0) for i in range(20)]
    reqs = [req(f"j{k}", 10) for k in range(5)]
    picks = {tuple(d.node for d in place_slices(gpus, reqs, PolicyConfig(policy="random", seed=s)).decisions)
             for s in range(5)}
    assert len(picks) > 1


def test_first_fit_takes_the_first_gpu_with_room_in_order():
    gpus = [gpu(index=0, used=90), gpu(index=1), gpu("n1", 0)]
    (d,) = place_slices(gpus, [req(share=20)], PolicyConfig(policy="first-fit")).decisions
    assert d.gpu_uuids == ("n0-1",)


def test_best_fit_takes_the_gpu_left_with_least_room():
    gpus = [gpu(index=0, used=10), gpu(index=1, used=60), gpu(index=2)]
    (d,) = place_slices(gpus, [req(share=30)], PolicyConfig(policy="best-fit")).decisions
    assert d.gpu_uuids == ("n0-1",)


@pytest.mark.parametrize("policy", ["fgd", "ours"])
def test_fragmentation_aware_policies_fill_the_hole_a_typical_request_cannot_use(policy):
    # typical requests take 70%: a 30% slice belongs in the 30% hole, not on an empty GPU
    gpus = [gpu("a", 0, used=70), gpu("b", 0)]
    workload = [(req("t", 70), 1.0)]
    (d,) = place_slices(gpus, [req(share=30)], PolicyConfig(policy=policy), workload=workload).decisions
    assert d.node == "a"


def test_unknown_policy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown policy 'tetris'; choose one of random"):
        place_slices([gpu()], [req()], PolicyConfig(policy="tetris"))


def test_a_share_outside_one_to_capacity_is_never_satisfiable():
    b = only_blocked(place_slices([gpu()], [req(share=0)], PolicyConfig()))
    assert b.never and b.reason == "share 0 is not 1..capacity of any GPU"


@pytest.mark.parametrize("reference_model", [None, "A100"])
def test_a_whole_gpu_request_takes_all_of_a_free_gpus_units_whatever_its_speed(reference_model):
    """--gres=gpu:1: the GPU itself, so all of its units even where reference units would make
    100 of them fewer (a GPU twice the reference's speed), and never a GPU that carries a slice."""
    config = PolicyConfig(reference_model=reference_model)
    gpus = [gpu("n0", index=0, model="H100", speed=2.0, used=10), gpu("n0", index=1, model="H100", speed=2.0),
            gpu("n1", model="A100", speed=1.0)]
    result = place_slices(gpus, [req("w", share=100, whole=True, models=frozenset({"h100"}))], config)
    (d,) = result.decisions
    assert d.gpu_uuids == ("n0-1",) and d.share == 100
    after = place_slices([replace(g, used=100) if g.uuid == "n0-1" else g for g in gpus],
                         [req("s", share=10, models=frozenset({"h100"}))], config)
    assert after.decisions[0].gpu_uuids == ("n0-0",)


def test_a_whole_gpu_request_waits_while_every_gpu_carries_a_slice():
    b = only_blocked(place_slices([gpu(index=0, used=5), gpu(index=1, used=1)], [req(share=100, whole=True)],
                                  PolicyConfig()))
    assert b.reason == "needs a whole GPU that carries no slice; no eligible GPU is free" and not b.never


def test_a_latency_slice_takes_the_fastest_gpu_among_equals_and_a_throughput_one_node_order():
    """Speeds are the GPUs' own (the site's GpuSpeed or the datasheet's): with the T4 said to be the
    faster, the latency slice goes there instead."""
    gpus = [GpuState("t4", "n0", 0, "T4", 15360, speed=0.21), GpuState("h100", "n1", 0, "H100", 81920, speed=3.2)]
    latency, throughput = Request("a", 30, slo_class=SloClass.LATENCY), Request("b", 30)
    for policy in ("ours", "fgd", "first-fit", "best-fit"):
        config = PolicyConfig(policy=policy)
        (decision,) = place_slices(gpus, [latency], config).decisions
        assert decision.gpu_uuids == (("h100",) if policy == "ours" else ("t4",)), policy
        assert place_slices(gpus, [throughput], config).decisions[0].gpu_uuids == ("t4",)
    flipped = [replace(gpus[0], speed=5.0), gpus[1]]
    assert place_slices(flipped, [latency], PolicyConfig()).decisions[0].gpu_uuids == ("t4",)
