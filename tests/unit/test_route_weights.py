"""Routing weights from service rates (mu/lambda routing's pure part): proportional, whole, never
draining a replica that serves; measured rates move them from a profile's prior."""
from __future__ import annotations

import pytest

from slurm_vgpu.catalog import MODELS
from slurm_vgpu.profiles import Figures, Point, throughput_at
from slurm_vgpu.route.weights import MeasuredRates, batch_rates, replica_rates, weights


def point(model: str, share: int, throughput: float, batch: int = 1) -> Point:
    return Point("chat", model, share, Figures(throughput, 10.0, 20.0, batch))


def test_weights_follow_service_rates_the_fastest_at_the_proxys_most():
    assert weights({"h100": 137.8, "a100": 61.6, "t4": 21.0}) == {"h100": 256, "a100": 114, "t4": 39}


def test_a_very_slow_replica_keeps_weight_1_and_one_that_serves_nothing_gets_0():
    assert weights({"fast": 1000.0, "slow": 0.1, "dead": 0.0}) == {"fast": 256, "slow": 1, "dead": 0}
    assert weights({"a": 0.0}) == {"a": 0} and weights({}) == {}


def test_every_replica_gets_the_same_service_rate_over_arrival_rate():
    rates = {"h100": 137.8, "a100": 61.6, "l40s": 63.2, "t4": 21.0}
    w = weights(rates)
    arrivals = {n: 200 * w[n] / sum(w.values()) for n in rates}  # 200 requests/s split by weight
    ratios = [rates[n] / arrivals[n] for n in rates]
    assert max(ratios) / min(ratios) == pytest.approx(1.0, abs=0.03)  # whole weights round a little


def test_measured_rates_move_from_the_prior_to_the_completions_as_they_come_in():
    measured = MeasuredRates(prior={"a": 1.0, "b": 1.0}, pseudo=20)
    assert measured.rates == {"a": 1.0, "b": 1.0} and measured.weights() == {"a": 256, "b": 256}
    measured.observe("a", completed=20, busy_s=1.0, elapsed_s=1.0)
    # the prior's unit is fitted to a's 20/s first; a is as much prior as measurement, b all prior
    assert measured.rates == pytest.approx({"a": 20.0, "b": 20.0})
    for _ in range(100):
        measured.observe("a", completed=100, busy_s=1.0, elapsed_s=1.0)
        measured.observe("b", completed=25, busy_s=1.0, elapsed_s=1.0)
    assert measured.rates == pytest.approx({"a": 100.0, "b": 25.0}, rel=0.02)
    assert measured.weights()["a"] == 256 and abs(measured.weights()["b"] - 64) <= 1


def test_an_idle_replica_is_not_taken_for_a_slow_one_and_a_stuck_one_is_never_drained():
    measured = MeasuredRates(prior={"fast": 2.0, "idle": 1.0}, pseudo=20)
    for _ in range(100):
        measured.observe("fast", completed=80, busy_s=0.5, elapsed_s=1.0)  # 160/s while busy
        measured.observe("idle", completed=0, busy_s=0.0, elapsed_s=1.0)
    # the idle one keeps its prior, in the unit fitted from the others: half the fast one's
    assert measured.rates == pytest.approx({"fast": 160.0, "idle": 80.0}, rel=0.02)

    measured.track({"fast": 2.0, "stuck": 2.0})
    for _ in range(100):
        measured.observe("fast", completed=80, busy_s=0.5, elapsed_s=1.0)
        measured.observe("stuck", completed=0, busy_s=1.0, elapsed_s=1.0)  # requests in hand, none done
    assert 0 < measured.rates["stuck"] < 1.0 and measured.weights()["stuck"] == 1


def test_a_replica_on_another_gpu_starts_again_from_its_prior_and_old_measurements_fade():
    measured = MeasuredRates(prior={"a": 10.0, "b": 10.0}, half_life_s=10, pseudo=20)
    for _ in range(50):
        measured.observe("a", completed=10, busy_s=1.0, elapsed_s=1.0)
        measured.observe("b", completed=10, busy_s=1.0, elapsed_s=1.0)
    measured.track({"a": 10.0, "b": 30.0})  # b requeued onto a GPU three times as fast
    assert measured.rates["b"] == pytest.approx(30.0, rel=0.01)
    for _ in range(60):  # a slows to half: a new co-tenant on its GPU
        measured.observe("a", completed=5, busy_s=1.0, elapsed_s=1.0)
    assert measured.rates["a"] == pytest.approx(5.0, rel=0.05)
    measured.track({"b": 30.0})
    assert measured.rates.keys() == {"b"}


def test_a_curve_gives_its_measured_points_the_line_between_them_and_flat_past_its_last():
    curve = [point("a100", 50, 80.0), point("a100", 20, 40.0), point("a100", 100, 100.0)]
    assert [throughput_at(curve, s) for s in (20, 35, 50, 75, 100)] == [40.0, 60.0, 80.0, 90.0, 100.0]
    assert throughput_at(curve, 10) == 20.0  # below the smallest share: scaled down with the share
    assert throughput_at(curve[2:], 100) == 100.0 and throughput_at(curve[2:], 40) == 40.0


def test_a_profile_rates_each_model_at_the_service_s_share_for_each_batch_size():
    points = [point("a100", 30, 60.0), point("a100", 50, 80.0), point("a100", 30, 200.0, batch=8),
              point("t4", 30, 20.0), point("t4", 100, 30.0)]
    rates = batch_rates(points, 40)
    assert list(rates) == [1, 8]
    assert rates[1] == pytest.approx({"a100": 70.0, "t4": 20.0 + 10.0 * (40 - 30) / (100 - 30)})
    assert rates[8] == pytest.approx({"a100": 200.0})  # above its one measured share: flat


def test_replicas_on_profiled_models_take_the_profile_and_others_scale_it_by_gpu_speed():
    models = {"r0": "a100", "r1": "t4", "r2": "h100"}
    speed = {m: MODELS[m].speed for m in models.values()}
    profiled = {"a100": 70.0, "t4": 20.0}
    per_speed = (70.0 / speed["a100"] + 20.0 / speed["t4"]) / 2
    assert replica_rates(models, 40, profiled, {}) == pytest.approx(
        {"r0": 70.0, "r1": 20.0, "r2": per_speed * speed["h100"]})
    # no profile: the GPU's speed times the share, the site's speed before the datasheet's
    assert replica_rates(models, 40, {}, {"t4": 2.0}) == pytest.approx(
        {"r0": 40 * speed["a100"], "r1": 80.0, "r2": 40 * speed["h100"]})
