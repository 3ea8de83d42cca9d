"""Share prices (slurm_vgpu/policy/prices.py): the dual of the tightest packing of the typical
shares, solved without an LP library; checked against the LP solver the bound uses."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vgpu.policy.model import PolicyConfig, Request
from slurm_vgpu.policy.prices import heaviest_gpu, share_prices
from slurm_vgpu.sim.bound import fewest_gpus
from slurm_vgpu.sim.replay import Replay
from slurm_vgpu.sim.trace import load_nodes


@pytest.mark.parametrize("counts, prices", [
    ({500: 4}, {500: 0.5}),
    ({600: 3}, {600: 1.0}),  # no two share a GPU
    ({810: 1}, {810: 1.0}),  # its 190 is lost: the share costs a whole GPU
    ({470: 10, 320: 5}, {470: 0.5, 320: 1 / 3}),
])
def test_prices_where_the_tightest_packing_is_plain(counts, prices):
    assert share_prices(counts, 1000) == pytest.approx(prices, abs=1e-9)


def test_shares_that_fill_each_others_room_share_a_gpu_between_them():
    prices = share_prices({810: 10, 190: 10}, 1000)
    assert prices[810] + prices[190] == pytest.approx(1.0, abs=1e-9)


def test_whole_gpus_and_cpu_only_tasks_get_no_price():
    assert share_prices({1000: 5, 0: 3, 400: 2}, 1000) == pytest.approx({400: 0.5})


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(1, 99), st.integers(1, 40), min_size=1, max_size=12))
def test_prices_are_the_optimal_dual_of_the_packing_lp(counts):
    """No GPU's worth of shares is priced over 1 (so the prices bound the GPUs any packing needs
    from below), and they meet the LP's optimum as the bound's solver (HiGHS) finds it."""
    prices = share_prices(counts, 100)
    sizes = sorted(prices)
    worth, _ = heaviest_gpu(sizes, [prices[s] for s in sizes], 100)
    assert worth <= 1.0 + 1e-6
    assert sum(prices[s] * n for s, n in counts.items()) == pytest.approx(fewest_gpus(counts, 100), abs=1e-6)


def test_ours_keeps_the_room_a_650_left_for_the_320_that_completes_it(tmp_path: Path):
    """A 470 leaves 530 free and a 650 leaves 350. FGD's one-step measure puts a 230 beside the
    650 (120 left, which no typical share uses); the prices see that 350 is what a 320 needs and
    that 530 takes the 230 and another 230 after it, so ours puts it beside the 470."""
    nodes = tmp_path / "n.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,960000,2621440,2,G2\n")
    cluster = load_nodes(nodes)
    weights = {160: 74, 230: 140, 320: 328, 460: 128, 470: 750, 650: 253, 810: 1078, 1000: 3911}
    typical = [(Request(job_id=f"t{s}", share=s, gpus=1), float(w)) for s, w in weights.items()]
    rooms = {}
    for policy in ("fgd", "ours"):
        replay = Replay(cluster, (0,), PolicyConfig(policy=policy), typical)
        for job, share in (("a", 470), ("b", 650), ("c", 230)):
            assert replay.place(Request(job_id=job, share=share, gpus=1))
        rooms[policy] = sorted(g.free for g in replay.state.views[0].gpus)
    assert rooms == {"fgd": [120, 530], "ours": [300, 350]}


def test_a_solve_that_runs_out_of_pivots_prices_each_size_by_its_size(monkeypatch):
    """A safety net, not a result: each size is then worth the room it takes, no more."""
    import slurm_vgpu.policy.prices as prices
    monkeypatch.setattr(prices, "_MAX_PIVOTS", 0)
    assert share_prices({470: 10, 320: 5}, 1000) == pytest.approx({470: 0.47, 320: 0.32})
