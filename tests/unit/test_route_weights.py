"""Routing weights from service rates (mu/lambda routing's pure part): proportional, whole, never
draining a replica that serves; measured rates move them from a profile's prior."""
from __future__ import annotations

import pytest

from slurm_vgpu.route.weights import MeasuredRates, weights


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


def test_measured_rates_replace_the_prior_as_completions_come_in():
    measured = MeasuredRates(prior={"a": 1.0, "b": 1.0}, smoothing=0.5)
    measured.observe("a", completed=100, busy_s=1.0)
    measured.observe("b", completed=0, busy_s=0.0)  # idle: nothing learned, the prior holds
    assert measured.rates == {"a": 50.5, "b": 1.0}
    measured.observe("a", completed=100, busy_s=1.0)
    assert measured.rates["a"] == 75.25 and measured.weights() == {"a": 256, "b": 3}
