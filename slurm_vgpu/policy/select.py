"""Pick the node among scored candidates, and the GPUs among a node's equal options.

Candidates come grouped, one group per node shape (all its nodes score alike; see :mod:`.cluster`). Ties go to the first node in order, or, for the policies that
copy kube-scheduler, to a uniform draw seeded by the config's seed and the job id, so a run is
reproducible.
"""
from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def rng_for(seed: int, job_id: str) -> random.Random:
    """A generator that depends only on the seed and the job (string seeding is stable across runs)."""
    return random.Random(f"{seed}/{job_id}")


def pick_node(groups: Sequence[tuple[tuple, Sequence[int]]], rng: random.Random | None) -> tuple[int, int]:
    """``groups`` are (score, ascending node ranks); returns (group index, rank) of the chosen node:
    best score, then a uniform draw among the tied nodes in rank order when ``rng`` is given (so
    the draw does not depend on how nodes were grouped), else the first rank."""
    best = max(score for score, _ in groups)
    tied = [gi for gi, (score, _) in enumerate(groups) if score == best]
    if rng is None:
        rank, gi = min((groups[gi][1][0], gi) for gi in tied)
        return gi, rank
    nodes = sorted(rank for gi in tied for rank in groups[gi][1])
    rank = nodes[rng.randrange(len(nodes))]
    gi = next(gi for gi in tied if _holds(groups[gi][1], rank))
    return gi, rank


def _holds(ranks: Sequence[int], rank: int) -> bool:
    i = bisect.bisect_left(ranks, rank)
    return i < len(ranks) and ranks[i] == rank


def pick_option(options: Sequence[T], rng: random.Random | None) -> T:
    """The policy's first option, or a uniform draw among them when ``rng`` is given."""
    return options[0] if rng is None or len(options) == 1 else options[rng.randrange(len(options))]
