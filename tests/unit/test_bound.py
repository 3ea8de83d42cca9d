"""The packing bound behind bench/bound: never above a real packing, tight where the answer is known."""
from __future__ import annotations

import bisect
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vgpu.policy.model import PolicyConfig, Request
from slurm_vgpu.sim.bound import fewest_gpus, least_idle_gpus, one_gpu_shares
from slurm_vgpu.sim.protocol import arrivals
from slurm_vgpu.sim.replay import Replay
from slurm_vgpu.sim.synthetic import synthetic_trace


def best_fit_decreasing(shares: Counter, capacity: int) -> list[int]:
    """A real packing: each share, largest first, into the fullest GPU it fits; the rooms it
    leaves on the GPUs it uses, ascending."""
    rooms: list[int] = []
    for share in sorted(shares.elements(), reverse=True):
        i = bisect.bisect_left(rooms, share)
        if i < len(rooms):
            bisect.insort(rooms, rooms.pop(i) - share)
        else:
            bisect.insort(rooms, capacity - share)
    return rooms


@pytest.mark.parametrize("shares, gpus", [
    ({600: 3}, 3),  # no two share a GPU, though their sum fits in two
    ({500: 4}, 2),
    ({810: 3, 160: 3}, 3),
    ({470: 4, 60: 2}, 2),
])
def test_the_bound_meets_the_optimum_where_it_is_known(shares, gpus):
    assert fewest_gpus(shares, 1000) == pytest.approx(gpus, abs=1e-6)


def test_an_810_share_leaves_its_190_idle_unless_a_small_share_joins_it():
    assert least_idle_gpus({810: 10}, 1000) == pytest.approx(1.9, abs=1e-6)
    assert least_idle_gpus({810: 10, 160: 4}, 1000) == pytest.approx(1.9 - 0.64, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(10, 99).map(lambda s: s * 10), st.integers(1, 30), min_size=1,
                       max_size=8))
def test_the_bound_lies_between_the_shares_mass_and_a_real_packing(shares):
    shares = Counter(shares)
    bound = fewest_gpus(shares, 1000)
    mass = sum(s * n for s, n in shares.items()) / 1000
    assert mass - 1e-6 <= bound <= len(best_fit_decreasing(shares, 1000)) + 1e-6


def test_a_replay_leaves_at_least_the_bound_idle_on_the_gpus_that_hold_shares(tmp_path):
    cluster, pods = synthetic_trace(tmp_path, 3)
    arr = arrivals(pods, cluster.capacity, len(cluster.nodes), 42, 1.3)
    workload = [(p, 1.0) for p in pods]
    for policy in ("first-fit", "fgd", "ours"):
        replay = Replay(cluster, arr.node_order, PolicyConfig(policy=policy, seed=42), workload)
        placed = Counter(r.share for r in arr.pods
                         if replay.place(r) and r.gpus == 1 and r.share < 1000)
        idle_beside_shares = sum(g.free for v in replay.state.views for g in v.gpus
                                 if 0 < g.used and g.free > 0) / 1000
        assert placed, "the synthetic trace should place some shares"
        assert idle_beside_shares >= least_idle_gpus(placed, 1000) - 1e-6


def test_one_gpu_shares_are_split_at_the_point_they_arrive_by():
    pods = [Request("a", 810), Request("b", 1000), Request("c", 1000, gpus=2), Request("d", 470),
            Request("e", 0, gpus=0), Request("f", 160)]
    # arrived: 810, 1810, 3810, 4280, 4280, 4440
    assert one_gpu_shares(pods, 4280, 1000) == (Counter({810: 1, 470: 1}), Counter({160: 1}))
    assert one_gpu_shares(pods, 4279, 1000) == (Counter({810: 1}), Counter({470: 1, 160: 1}))


def test_later_shares_may_fill_the_rooms_the_earlier_ones_leave():
    """The 190 an 810 share leaves idle is filled by a 190 share arriving later, if there is one."""
    assert least_idle_gpus({810: 10}, 1000, later={190: 10}) == pytest.approx(0.0, abs=1e-6)
    assert least_idle_gpus({810: 10}, 1000, later={190: 4}) == pytest.approx(1.9 - 4 * 0.19, abs=1e-6)
    assert least_idle_gpus({810: 10}, 1000, later={200: 50}) == pytest.approx(1.9, abs=1e-6)  # too big to join
    assert least_idle_gpus({}, 1000, later={190: 4}) == 0.0  # nothing placed early: nothing to leave idle


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.integers(10, 99).map(lambda s: s * 10), st.integers(1, 30), min_size=1, max_size=6),
       st.dictionaries(st.integers(1, 99).map(lambda s: s * 10), st.integers(1, 30), max_size=6))
def test_later_shares_only_lower_the_bound_and_a_real_packing_meets_it(shares, later):
    """With later shares the bound is at most the bound without them, and at most what a real
    packing of the early shares with every later share that fits its rooms leaves idle."""
    shares, later = Counter(shares), Counter(later)
    bound = least_idle_gpus(shares, 1000, later=later)
    assert -1e-9 <= bound <= least_idle_gpus(shares, 1000) + 1e-6
    rooms = best_fit_decreasing(shares, 1000)
    for size in sorted(later.elements()):  # smallest first into the fullest room it fits
        i = bisect.bisect_left(rooms, size)
        if i < len(rooms):
            bisect.insort(rooms, rooms.pop(i) - size)
    assert bound <= sum(rooms) / 1000 + 1e-6


def test_a_share_larger_than_a_gpu_is_refused():
    with pytest.raises(ValueError, match="shares must lie in 1..1000"):
        fewest_gpus({1200: 1}, 1000)
