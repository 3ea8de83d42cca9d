"""How much GPU capacity a set of one-GPU shares leaves idle however it is packed (a lower bound).

Why: a GPU that holds shares is idle by whatever its shares leave free, and no policy, online or
with hindsight, can put a set of shares on fewer GPUs than bin packing allows. The configuration
LP (Gilmore and Gomory) bounds that number from below; its dual is a weight per share size with
no GPU's worth of shares weighing more than 1, so any such weights prove the bound, and the
weights the solver returns are checked by an exact knapsack before they are used. Whole-GPU tasks
leave nothing idle, so they do not appear here.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from ..policy.model import Request
from ..policy.prices import heaviest_gpu
from .protocol import gpu_request


def one_gpu_shares(pods: Iterable[Request], capacity_units: int, gpu_capacity: int) -> tuple[Counter, Counter]:
    """Share size -> count of the one-GPU shares among ``pods``: those that arrive before their
    total GPU request passes ``capacity_units``, and those that arrive after."""
    before: Counter = Counter()
    after: Counter = Counter()
    arrived = 0
    for pod in pods:
        arrived += gpu_request(pod)
        if pod.gpus == 1 and 0 < pod.share < gpu_capacity:
            (before if arrived <= capacity_units else after)[pod.share] += 1
    return before, after


def least_idle_gpus(shares: Mapping[int, int], capacity: int, later: Mapping[int, int] | None = None) -> float:
    """The idle capacity, in GPUs, that any packing of ``shares`` onto GPUs of ``capacity`` leaves
    on the GPUs that hold them, when any of the ``later`` shares (size -> count; none by default)
    may also join them to fill their rooms.

    Configuration LP: ``x_c`` GPUs filled as configuration ``c`` (shares that fit one GPU), each
    leaving its room idle; at least ``shares[s]`` and at most ``shares[s] + later[s]`` of each
    size placed. Its dual (``y_s`` for the first, ``z_s`` for the second) is feasible when no
    configuration's ``sum(y_s - z_s + s/capacity)`` passes 1, which an exact knapsack checks; a
    small excess ``e`` is taken off by raising every ``z_s`` by ``e`` (each configuration holds a
    share at least), so the bound ``sum(shares*y) - sum(most*z)`` holds whatever the solver's
    tolerance."""
    from scipy.optimize import linprog  # only the bound needs an LP solver

    later = later or {}
    sizes = sorted(s for s in set(shares) | set(later) if shares.get(s, 0) + later.get(s, 0) > 0)
    if not sizes or not any(shares.get(s, 0) for s in sizes):
        return 0.0
    if sizes[0] <= 0 or sizes[-1] > capacity:
        raise ValueError(f"shares must lie in 1..{capacity}, got {sizes[0]}..{sizes[-1]}")
    least = [shares.get(s, 0) for s in sizes]
    most = [shares.get(s, 0) + later.get(s, 0) for s in sizes]
    columns = [[capacity // s if j == i else 0 for j in range(len(sizes))] for i, s in enumerate(sizes)]
    while True:
        idle = [(capacity - sum(a * s for a, s in zip(col, sizes))) / capacity for col in columns]
        result = linprog(idle, method="highs",
                         A_ub=[*([-col[i] for col in columns] for i in range(len(sizes))),
                               *([col[i] for col in columns] for i in range(len(sizes)))],
                         b_ub=[*(-n for n in least), *most])
        if result.status != 0:
            raise RuntimeError(f"the packing LP failed: {result.message}")
        marginals = result.ineqlin.marginals
        y = [max(0.0, -m) for m in marginals[:len(sizes)]]
        z = [max(0.0, -m) for m in marginals[len(sizes):]]
        values = [yi - zi + s / capacity for yi, zi, s in zip(y, z, sizes)]
        heaviest, column = heaviest_gpu(sizes, values, capacity)
        if heaviest <= 1.0 + 1e-7 or column in columns:
            excess = max(0.0, heaviest - 1.0)
            return max(0.0, sum(yi * n for yi, n in zip(y, least)) - sum((zi + excess) * n for zi, n in zip(z, most)))
        columns.append(column)


def fewest_gpus(shares: Mapping[int, int], capacity: int) -> float:
    """A lower bound on the GPUs of ``capacity`` units that can hold ``shares`` (size -> count)."""
    return least_idle_gpus(shares, capacity) + sum(s * n for s, n in shares.items()) / capacity
