"""Routing weights from service rates: the pure part of mu/lambda routing.

A proxy that sends replica i a fraction w_i / sum(w) of the requests gives it the arrival rate
lambda_i = lambda * w_i / sum(w); with w_i proportional to its service rate mu_i, every
mu_i / lambda_i is the same, sum(mu) / lambda, and no replica saturates before the service as a
whole does. Round-robin (equal w_i) saturates the slowest replica first: at a load of rho of the
total capacity, a replica of 1/k of the mean rate is at k * rho.

Rates come first from a profile (the model and share a replica runs on), then from the completions
measured while it serves (:class:`MeasuredRates`). Weights are whole numbers as a proxy takes them
(HAProxy's server weights: 1 to 256; 0 drains a server).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_WEIGHT = 256  # HAProxy's largest server weight


def weights(rates: Mapping[str, float], most: int = MAX_WEIGHT) -> dict[str, int]:
    """Whole weights proportional to ``rates`` (requests/s per replica), the fastest at ``most``;
    a replica serving (rate above 0) never rounds to 0, which would drain it; a rate of 0 gives 0."""
    fastest = max(rates.values(), default=0.0)
    if fastest <= 0:
        return {name: 0 for name in rates}
    return {name: max(1, round(most * rate / fastest)) if rate > 0 else 0 for name, rate in rates.items()}


@dataclass
class MeasuredRates:
    """Each replica's service rate from its completions, smoothed: the rate while busy (completions
    over the time it had requests in hand), so an idle replica's rate is not mistaken for a slow
    one's. ``prior`` (from a profile) holds until a replica has been measured."""

    prior: Mapping[str, float]
    smoothing: float = 0.3  # weight of the newest interval
    rates: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rates = dict(self.prior)

    def observe(self, name: str, completed: int, busy_s: float) -> None:
        """``completed`` requests in ``busy_s`` seconds of having at least one in hand."""
        if busy_s <= 0 or completed <= 0:
            return
        measured = completed / busy_s
        old = self.rates.get(name)
        self.rates[name] = measured if old is None else (1 - self.smoothing) * old + self.smoothing * measured

    def weights(self) -> dict[str, int]:
        return weights(self.rates)
