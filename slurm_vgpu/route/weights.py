"""Routing weights from service rates: the pure part of mu/lambda routing.

A proxy that sends replica i a fraction w_i / sum(w) of the requests gives it the arrival rate
lambda_i = lambda * w_i / sum(w); with w_i proportional to its service rate mu_i, every
mu_i / lambda_i is the same, sum(mu) / lambda, and no replica saturates before the service as a
whole does. Round-robin (equal w_i) saturates the slowest replica first: at a load of rho of the
total capacity, a replica of 1/k of the mean rate is at k * rho.

Rates come first from a profile (the workload's measured throughput on the model and at the share
a replica runs on, :func:`replica_rates`), then from the completions measured while it serves
(:class:`MeasuredRates`). Weights are whole numbers as a proxy takes them
(HAProxy's server weights: 1 to 256; 0 drains a server).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..catalog import speed_of
from ..profiles import Point, curves, throughput_at

MAX_WEIGHT = 256  # HAProxy's largest server weight


def weights(rates: Mapping[str, float], most: int = MAX_WEIGHT) -> dict[str, int]:
    """Whole weights proportional to ``rates`` (requests/s per replica), the fastest at ``most``;
    a replica serving (rate above 0) never rounds to 0, which would drain it; a rate of 0 gives 0."""
    fastest = max(rates.values(), default=0.0)
    if fastest <= 0:
        return {name: 0 for name in rates}
    return {name: max(1, round(most * rate / fastest)) if rate > 0 else 0 for name, rate in rates.items()}


def batch_rates(points: Iterable[Point], share: int) -> dict[int, dict[str, float]]:
    """Per batch size profiled, each GPU model's throughput (requests/s) at ``share``: what one
    replica on that model serves of requests of that batch."""
    rates: dict[int, dict[str, float]] = {}
    for (_, model, batch), curve in curves(points).items():
        rates.setdefault(batch, {})[model] = throughput_at(curve, share)
    return dict(sorted(rates.items()))


def replica_rates(models: Mapping[str, str], share: int, profiled: Mapping[str, float],
                  site_speeds: Mapping[str, float]) -> dict[str, float]:
    """Each replica's service rate from the GPU model it runs on (replica -> model): the profile's
    throughput where that model was profiled; a model not profiled gets the profiled models' mean
    throughput per unit of GPU speed times its own speed; with no profile at all, speed x share
    (a relative rate, which is all weights need)."""
    if not profiled:
        return {name: speed_of(model, site_speeds)[0] * share for name, model in models.items()}
    per_speed = sum(rate / speed_of(model, site_speeds)[0] for model, rate in profiled.items()) / len(profiled)
    return {name: profiled[model] if model in profiled else per_speed * speed_of(model, site_speeds)[0]
            for name, model in models.items()}


@dataclass
class MeasuredRates:
    """Each replica's service rate learned from its completions: completions over busy time (time
    with at least one request in hand, so that an idle replica is not mistaken for a slow one),
    both summed with a half-life so that the rate follows a replica that slows down (a new
    co-tenant on its GPU).

    ``prior`` (a profile's requests/s, or speed x share in any unit) holds until completions come
    in: its unit is first fitted to the completions of all replicas together (one factor), then
    each replica's rate moves from its fitted prior to its own measurement as its completions pass
    ``pseudo``, the weight the prior counts as. A replica that moved to another GPU (its prior
    changed) starts again from its prior."""

    prior: Mapping[str, float]
    half_life_s: float = 30.0
    pseudo: float = 20.0  # completions the prior is worth
    completed: dict[str, float] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prior = dict(self.prior)

    def track(self, prior: Mapping[str, float]) -> None:
        """The replicas that run now, each with its prior: a replica gone or with a new prior
        forgets what was measured of it."""
        for name in list(self.completed):
            if self.prior.get(name) != prior.get(name):
                del self.completed[name], self.busy_s[name]
        self.prior = dict(prior)

    def observe(self, name: str, completed: int, busy_s: float, elapsed_s: float) -> None:
        """``completed`` requests and ``busy_s`` seconds with requests in hand, in the last
        ``elapsed_s`` seconds."""
        fade = 0.5 ** (elapsed_s / self.half_life_s)
        self.completed[name] = self.completed.get(name, 0.0) * fade + completed
        self.busy_s[name] = self.busy_s.get(name, 0.0) * fade + busy_s

    @property
    def rates(self) -> dict[str, float]:
        measured = [n for n in self.completed if self.prior.get(n, 0) > 0]
        completions = sum(self.completed[n] for n in measured)
        expected = sum(self.busy_s[n] * self.prior[n] for n in measured)
        unit = completions / expected if expected > 0 and completions >= self.pseudo else 1.0
        return {name: (self.completed.get(name, 0.0) + self.pseudo) / (self.busy_s.get(name, 0.0) + self.pseudo / (prior * unit))
                if prior > 0 else 0.0 for name, prior in self.prior.items()}

    def weights(self) -> dict[str, int]:
        return weights(self.rates)
