"""Latency targets and the share that meets one (gpulet's idea: size the slice from the profiled
latency against the target, not from a guess).

A target reads ``p99:50ms`` or ``p99:50ms,rate:200/s``. Against a workload's profiles it picks, per
GPU model, the smallest measured share whose p99 meets the latency and whose throughput carries the
rate with headroom; no share is extrapolated between or beyond what was measured.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .contract import slo_target
from .profiles import Point

# A share carries a rate only up to this fraction of its measured throughput: at 80% busy a queue
# of requests already waits about two service times (M/D/1), which a p99 measured without one hides.
UTILISATION_CEILING = 0.8


class SloError(ValueError):
    """A target that cannot be read; the message says what to write instead."""


@dataclass(frozen=True)
class Target:
    p99_ms: float
    rate: float | None = None  # requests per second the job must serve, when it says

    def __str__(self) -> str:
        return f"p99:{self.p99_ms:g}ms" + (f",rate:{self.rate:g}/s" if self.rate is not None else "")


def parse_target(text: str) -> Target:
    """A target as written (``p99:50ms,rate:200/s``, the grammar of :func:`contract.slo_target`)."""
    try:
        return Target(*slo_target(text))
    except ValueError as exc:
        raise SloError(f"{text}: {exc}") from None


@dataclass(frozen=True)
class Option:
    """A GPU model and the smallest measured share of it that meets the target."""
    point: Point
    cost: float  # share x the model's speed: the GPU work it takes, comparable across models

    @property
    def model(self) -> str:
        return self.point.model

    @property
    def share(self) -> int:
        return self.point.share


@dataclass(frozen=True)
class Choice:
    options: tuple[Option, ...]  # cheapest first; empty when nothing measured meets the target
    best: Point | None  # when there is no option: the closest the profiles come, to name in the reason

    def reason(self, name: str, target: Target) -> str:
        """Why nothing fits, naming the best the measured shares can do."""
        if self.best is None:
            return f"no profile of {name!r}; measure one with slurm-vgpu profile {name} ..."
        best = self.best
        return (f"no measured share of {name!r} meets {target}: the best is {best.model} at {best.share}% "
                f"(p99 {best.p99_ms:g} ms, {best.throughput:g}/s)")


def carries(point: Point, target: Target) -> bool:
    return target.rate is None or target.rate <= UTILISATION_CEILING * point.throughput


def meets(point: Point, target: Target) -> bool:
    return point.p99_ms <= target.p99_ms and carries(point, target)


def choose(points: Iterable[Point], target: Target, speeds: Mapping[str, float]) -> Choice:
    """Per GPU model, the smallest measured share that meets ``target`` (the lower p99 between
    batch sizes of one share); the models' options cheapest first (``speeds``: each model's speed
    relative to the reference, 1.0 for one not listed)."""
    points = list(points)
    smallest: dict[str, Point] = {}
    for point in sorted((p for p in points if meets(p, target)), key=lambda p: (p.share, p.p99_ms)):
        smallest.setdefault(point.model, point)
    options = sorted((Option(p, p.share * speeds.get(p.model, 1.0)) for p in smallest.values()),
                     key=lambda o: (o.cost, o.point.p99_ms, o.model))
    if options or not points:
        return Choice(tuple(options), None)
    carrying = [p for p in points if carries(p, target)]
    best = min(carrying, key=lambda p: p.p99_ms) if carrying else max(points, key=lambda p: p.throughput)
    return Choice((), best)
