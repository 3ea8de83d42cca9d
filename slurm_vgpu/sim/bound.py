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
from .protocol import gpu_request

_TOLERANCE = 1e-9


def one_gpu_shares(pods: Iterable[Request], capacity_units: int, gpu_capacity: int) -> Counter:
    """Share size -> count of the one-GPU shares among ``pods`` that arrive before their total GPU
    request passes ``capacity_units``."""
    shares: Counter = Counter()
    arrived = 0
    for pod in pods:
        arrived += gpu_request(pod)
        if arrived > capacity_units:
            break
        if pod.gpus == 1 and 0 < pod.share < gpu_capacity:
            shares[pod.share] += 1
    return shares


def _heaviest_gpu(sizes: list[int], weights: list[float], capacity: int) -> tuple[float, list[int]]:
    """The most weight one GPU can hold (any number of each size): exact unbounded knapsack."""
    best = [0.0] * (capacity + 1)
    last = [-1] * (capacity + 1)
    for room in range(1, capacity + 1):
        best[room], last[room] = best[room - 1], -1
        for i, size in enumerate(sizes):
            if size <= room and best[room - size] + weights[i] > best[room] + _TOLERANCE:
                best[room], last[room] = best[room - size] + weights[i], i
    counts = [0] * len(sizes)
    room = capacity
    while room > 0:
        if last[room] < 0:
            room -= 1
        else:
            counts[last[room]] += 1
            room -= sizes[last[room]]
    return best[capacity], counts


def fewest_gpus(shares: Mapping[int, int], capacity: int) -> float:
    """A lower bound on the GPUs of ``capacity`` units that can hold ``shares`` (size -> count),
    by column generation over the configuration LP."""
    from scipy.optimize import linprog  # only the bound needs an LP solver

    sizes = sorted(s for s, n in shares.items() if n > 0)
    if not sizes:
        return 0.0
    if sizes[0] <= 0 or sizes[-1] > capacity:
        raise ValueError(f"shares must lie in 1..{capacity}, got {sizes[0]}..{sizes[-1]}")
    counts = [shares[s] for s in sizes]
    columns = [[capacity // s if j == i else 0 for j in range(len(sizes))] for i, s in enumerate(sizes)]
    while True:
        result = linprog([1.0] * len(columns), method="highs",
                         A_ub=[[-col[i] for col in columns] for i in range(len(sizes))],
                         b_ub=[-n for n in counts])
        if result.status != 0:
            raise RuntimeError(f"the packing LP failed: {result.message}")
        weights = [max(0.0, -m) for m in result.ineqlin.marginals]
        heaviest, column = _heaviest_gpu(sizes, weights, capacity)
        if heaviest <= 1.0 + 1e-7 or column in columns:
            return sum(w * n for w, n in zip(weights, counts)) / max(1.0, heaviest)
        columns.append(column)


def least_idle_gpus(shares: Mapping[int, int], capacity: int) -> float:
    """The idle capacity, in GPUs, that any packing of ``shares`` onto GPUs of ``capacity`` leaves."""
    mass = sum(s * n for s, n in shares.items())
    return max(0.0, fewest_gpus(shares, capacity) - mass / capacity)
