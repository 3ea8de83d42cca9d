"""Show a simulation's figures: a table on the terminal and a plot of allocation vs arrived load."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..policy.model import SloClass
from .metrics import Figures, summary
from .time_figures import ON_TIME_S, TimeFigures


def print_table(runs: Sequence[Figures], arrival_max: float, console: Console | None = None) -> None:
    top = int(round(arrival_max * 100))
    table = Table(title=f"GPU allocation at {top}% arrivals (mean over seeds)")
    table.add_column("policy")
    table.add_column("seeds", justify="right")
    table.add_column("allocation %", justify="right")
    table.add_column("unallocated GPUs", justify="right")
    table.add_column("fragmentation %", justify="right")
    for cls in SloClass:
        table.add_column(f"failed {cls.value}", justify="right")
    table.add_column("failed GPU request", justify="right")
    table.add_column("seconds", justify="right")
    sums = summary(runs)
    for policy, s in sums.items():
        mine = [r for r in runs if r.policy == policy]
        failed = {c.value: np.mean([r.failed.get(c.value, 0) for r in mine]) for c in SloClass}
        table.add_row(
            policy,
            str(s["seeds"]),
            f"{s['allocation_mean']:.2f}" + (f" ± {s['allocation_sd']:.2f}" if s["seeds"] > 1 else ""),
            f"{s['unallocated_gpus_mean']:.0f}",
            f"{s['fragmentation_rate_mean']:.1f}",
            *(f"{failed[c.value]:.0f}" for c in SloClass),
            f"{s['failed_gpus_mean']:.1f}",
            f"{s['seconds']:.1f}",
        )
    (console or Console()).print(table)


def plot_allocation(runs: Sequence[Figures], path: Path, arrival_max: float) -> None:
    """One line per policy: mean allocation % against arrived GPU request % (the paper's Fig. 7)."""
    fig, ax = new_figure()
    top = int(round(arrival_max * 100))
    for policy in dict.fromkeys(r.policy for r in runs):
        curves = [r.curve for r in runs if r.policy == policy]
        buckets = sorted(set.intersection(*(set(c) for c in curves)))
        values = [np.mean([c[b] for c in curves]) for b in buckets]
        final = np.mean([r.allocation for r in runs if r.policy == policy])
        ax.plot(buckets, values, label=f"{policy} ({final:.2f}%)")
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlim(0, top)
    _save(fig, ax, path, "arrived GPU request (% of capacity)", "GPU allocation vs arrived load")


def new_figure():
    """A plot's figure; matplotlib (the `sim` extra) is imported only to draw one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5), dpi=120)


def _save(fig, ax, path: Path, xlabel: str, title: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("GPU allocation (% of capacity)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _wait(run_list: Sequence[TimeFigures], cls: SloClass) -> str:
    means = [r.wait_mean_s[cls.value] for r in run_list if cls.value in r.wait_mean_s]
    p99s = [r.wait_p99_s[cls.value] for r in run_list if cls.value in r.wait_p99_s]
    return f"{np.mean(means):.0f} / {np.mean(p99s):.0f}" if means else "-"


def print_time_table(runs: Sequence[TimeFigures], console: Console | None = None) -> None:
    """One row per scheduler, means over seeds; waits are mean / p99 seconds per class."""
    first = runs[0]
    table = Table(title=f"Replay in time (mean over seeds): offered GPU demand {first.demand_mean:.0f}% "
                        f"of capacity, at peak {first.demand_peak:.0f}%")
    for name in ("scheduler", "seeds", "allocation %", "peak %", "started", "withdrawn",
                 "never fit", "left waiting"):
        table.add_column(name, justify="left" if name == "scheduler" else "right")
    for cls in SloClass:
        table.add_column(f"wait {cls.value} s", justify="right")
    table.add_column(f"latency within {ON_TIME_S}s %", justify="right")
    table.add_column("preempted", justify="right")
    table.add_column("seconds", justify="right")
    for policy in dict.fromkeys(r.policy for r in runs):
        mine = [r for r in runs if r.policy == policy]
        table.add_row(
            policy, str(len(mine)),
            f"{np.mean([r.allocation_mean for r in mine]):.2f}",
            f"{np.mean([r.allocation_peak for r in mine]):.1f}",
            *(f"{np.mean([getattr(r, f) for r in mine]):.0f}" for f in ("started", "withdrawn", "refused", "stuck")),
            *(_wait(mine, cls) for cls in SloClass),
            f"{np.mean([r.latency_on_time for r in mine]):.1f}",
            f"{np.mean([r.preempted for r in mine]):.0f}",
            f"{sum(r.seconds for r in mine):.1f}",
        )
    (console or Console()).print(table)


def plot_time_allocation(runs: Sequence[TimeFigures], path: Path) -> None:
    """GPU allocation over time, one line per scheduler (its first seed)."""
    fig, ax = new_figure()
    span = max((t for r in runs for t, _ in r.series), default=0)
    unit, name = (3600, "hours") if span > 7200 else (60, "minutes")
    for policy in dict.fromkeys(r.policy for r in runs):
        run = next(r for r in runs if r.policy == policy)
        ax.step([t / unit for t, _ in run.series], [a for _, a in run.series], where="post",
                label=f"{policy} (mean {run.allocation_mean:.1f}%)")
    _save(fig, ax, path, f"{name} from the first arrival", "GPU allocation over time")
