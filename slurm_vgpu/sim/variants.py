"""Variants of a pod list that weigh one kind of task more or less, as the dataset's own variants do.

The Alibaba GPU trace ships, beside the default pod list, lists "sampled from the default one,
emphasizing certain types of workloads" (openb_pod_list_multigpu50.csv and the like), and packing
results are judged on them too. These are built the same way from any pod list: a variant
``KIND:PERCENT`` is the whole list followed by tasks drawn from it with replacement, of the kind
(or, to make its part smaller, of the others), until the kind's part reaches PERCENT; a part of 0
or 100%, which no number of added tasks reaches, drops the tasks of the kind or the others
instead. The dataset's multigpu50 is so built: the default's 8,152 tasks, then 909 drawn from its
multi-GPU ones.

- ``multigpu``: tasks of more than one GPU carry PERCENT of the GPU request;
- ``gpushare``: tasks sharing one GPU (less than a whole) are PERCENT of the GPU tasks;
- ``cpu``: CPU-only tasks ask for PERCENT of the CPU that GPU tasks ask for;
- ``gpuspec``: PERCENT of the GPU tasks may run on one GPU model only, drawn as the nodes' models
  are (a model of many small nodes is drawn more often than its share of the GPUs: the dataset's
  gpuspec33 ties 54% of its tied tasks to T4, 14% of the GPUs); no task is added.

Each ``draw`` gives another variant of the same figure, so that a result is not the fit to one file.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..policy.model import Request
from .protocol import gpu_request
from .trace import MILLI, Cluster


def _is_gpu_task(p: Request) -> bool:
    return p.share > 0


def _is_shared(p: Request) -> bool:
    return p.gpus == 1 and 0 < p.share < MILLI and not p.whole


@dataclass(frozen=True)
class Emphasis:
    """The kind a variant weighs (``of_kind``), the tasks its part is taken among and their sizes;
    ``per`` is the size the part is measured against, over the tasks not of the kind (None: over
    ``among``, so the part is a percentage of them)."""

    of_kind: Callable[[Request], bool]
    among: Callable[[Request], bool]
    size: Callable[[Request], float]
    per: Callable[[Request], float] | None = None


EMPHASES: dict[str, Emphasis] = {
    "multigpu": Emphasis(lambda p: p.gpus > 1, _is_gpu_task, gpu_request),
    "gpushare": Emphasis(_is_shared, _is_gpu_task, lambda p: 1.0),
    "cpu": Emphasis(lambda p: not _is_gpu_task(p), lambda p: True, lambda p: p.cpu_milli,
                    per=lambda p: p.cpu_milli),
}
KINDS = (*EMPHASES, "gpuspec")


class VariantError(ValueError):
    """A variant that cannot be built from this pod list; the message says what to write instead."""


def parse_variant(spec: str) -> tuple[str, float]:
    """``KIND:PERCENT`` (``multigpu:50``) into (kind, percent)."""
    kind, _, percent = spec.partition(":")
    try:
        value = float(percent)
    except ValueError:
        value = -1.0
    if kind not in KINDS or value < 0 or (kind != "cpu" and value > 100):
        raise VariantError(f"variant {spec!r}: write KIND:PERCENT with KIND one of {', '.join(KINDS)} "
                           "and PERCENT 0-100 (cpu: any percent of the GPU tasks' CPU), e.g. multigpu:50")
    return kind, value


def _counts(p: Request, e: Emphasis) -> tuple[float, float]:
    """What ``p`` adds to the kind's size and to the size the part is measured against."""
    if not e.among(p):
        return 0.0, 0.0
    if e.of_kind(p):
        return e.size(p), (e.size(p) if e.per is None else 0.0)
    return 0.0, (e.size(p) if e.per is None else e.per(p))


def _appended(pods: Sequence[Request], kind: str, percent: float, rng: random.Random) -> list[Request]:
    e = EMPHASES[kind]
    out = list(pods)
    kind_size, whole = (sum(c) for c in zip(*(_counts(p, e) for p in out)))

    def below() -> bool:
        return 100.0 * kind_size < percent * whole

    grow = below()
    if percent == 0 or (percent == 100 and e.per is None):  # no number of added tasks reaches these
        return [p for p in out if not e.among(p) or e.of_kind(p) == bool(percent)]
    donors = [p for p in pods if e.among(p) and e.of_kind(p) == grow]
    if not donors:
        raise VariantError(f"variant {kind}:{percent:g}: the pod list has no task "
                           f"{'of' if grow else 'outside'} the kind {kind!r} to draw from; "
                           "choose another pod list (--pods) or another percent")
    while below() == grow:
        new = replace(rng.choice(donors), job_id=f"{kind}{percent:g}-{len(out) - len(pods):05d}")
        k, w = _counts(new, e)
        kind_size, whole = kind_size + k, whole + w
        out.append(new)
    return out


def _constrained(pods: Sequence[Request], percent: float, node_models: Sequence[str],
                 rng: random.Random) -> list[Request]:
    out = list(pods)
    gpu_tasks = [i for i, p in enumerate(out) if _is_gpu_task(p)]
    for i in rng.sample(gpu_tasks, round(len(gpu_tasks) * percent / 100)):
        out[i] = replace(out[i], models=frozenset({rng.choice(node_models)}))
    return out


def node_models(cluster: Cluster) -> list[str]:
    """Each node's GPU model, once per node."""
    return list({g.node: g.model for g in cluster.gpus}.values())


def variant(pods: Sequence[Request], kind: str, percent: float, node_models: Sequence[str],
            draw: int = 0) -> list[Request]:
    """The pod list with ``kind`` at ``percent`` (see the module's docstring); ``node_models`` are the
    cluster's nodes' GPU models, one entry per node, for ``gpuspec``."""
    rng = random.Random(f"variant/{kind}/{percent:g}/{draw}")
    if kind == "gpuspec":
        return _constrained(pods, percent, node_models, rng)
    return _appended(pods, kind, percent, rng)
