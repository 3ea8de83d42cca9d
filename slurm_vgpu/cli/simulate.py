"""``slurm-vgpu simulate``: replay a GPU trace through the placement policies (FGD paper protocol)."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from ..config import NAMED_NUMBERS, ConfigError
from ..policy import POLICIES
from ..sim.trace import DEFAULT_DIR, DEFAULT_NODES, DEFAULT_PODS, TraceError, load_nodes, load_pods, load_timed_pods  # no numpy
from .output import console


def default_trace(name: str) -> Path:
    """``$SLURM_VGPU_TRACES/name``, else the trace shipped with the package."""
    env = os.environ.get("SLURM_VGPU_TRACES")
    return Path(env) / name if env else DEFAULT_DIR / name


def _policies(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in POLICIES]
    if unknown or not names:
        raise click.BadParameter(f"unknown policy {', '.join(unknown) or '(none)'}; "
                                 f"choose from {','.join(POLICIES)}")
    return names


def _variant(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, float] | None:
    from ..sim.variants import VariantError, parse_variant  # no numpy
    if value is None:
        return None
    try:
        return parse_variant(value)
    except VariantError as exc:
        raise click.BadParameter(str(exc)) from None


def _class_priority(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, int] | None:
    """The ClassPriority grammar of slurm-vgpu.conf, read by the same parser."""
    if value is None:
        return None
    try:
        return dict(NAMED_NUMBERS["class_priority"](value, "--class-priority"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("simulate")
@click.option("--nodes", "nodes_path", type=click.Path(dir_okay=False, path_type=Path),
              help=f"node CSV (sn,cpu_milli,memory_mib,gpu,model) [default: {DEFAULT_NODES} of the "
              "Alibaba GPU trace shipped with slurm-vgpu, or in $SLURM_VGPU_TRACES]")
@click.option("--pods", "pods_path", type=click.Path(dir_okay=False, path_type=Path),
              help=f"task CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli; gpu_spec and qos where "
              f"present) [default: {DEFAULT_PODS}]")
@click.option("--policies", default=",".join(POLICIES), show_default=True, callback=_policies,
              help="comma-separated policies to compare")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="number of seeds, 42 upwards")
@click.option("--users", type=click.IntRange(min=0), default=0, show_default=True,
              help="synthetic Unix users, one MPS user per GPU (0: ignore users)")
@click.option("--user-skew", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Zipf exponent of the tasks per user")
@click.option("--arrival-max", type=click.FloatRange(min=0, min_open=True), default=1.3,
              show_default=True, help="inflate arrivals to this multiple of GPU capacity")
@click.option("--variant", "variant_spec", callback=_variant, metavar="KIND:PERCENT",
              help="replay a variant of the pod list, as the dataset's own: multigpu:50 (multi-GPU "
              "tasks carry 50% of the GPU request), gpushare:N (% of GPU tasks sharing a GPU), cpu:N "
              "(CPU-only tasks' CPU as % of the GPU tasks'), gpuspec:N (% of GPU tasks tied to one model)")
@click.option("--variant-draw", type=click.IntRange(min=0), default=0, show_default=True,
              help="with --variant: which random draw of the variant")
@click.option("--time", "in_time", is_flag=True,
              help="replay creation and deletion times: tasks queue, run and leave; Slurm's own "
              "first-fit with backfill is the baseline")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="with --time: arrivals this many times faster, run times unchanged")
@click.option("--class-priority", callback=_class_priority, metavar="CLASS:WEIGHT,...",
              help="with --time: the daemon's ClassPriority (e.g. latency:10000,best-effort:-10000) orders "
              "the policies' queues; Slurm's stays in creation order")
@click.option("--preempt-grace", type=click.IntRange(min=0), metavar="SECONDS",
              help="with --time: the policies preempt best-effort tasks for waiting latency ones, as the "
              "daemon's PreemptBestEffort=yes, after this grace time (PreemptGraceTime)")
@click.option("--cluster-fraction", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0,
              show_default=True, help="with --time: keep this random fraction of the nodes (per seed)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="write allocation vs arrived load (with --time: over time), one line per policy, "
              "to this PNG")
@click.option("--json", "as_json", is_flag=True, help="print every figure per policy per seed as JSON")
def simulate(nodes_path: Path | None, pods_path: Path | None, policies: list[str], seeds: int,
             users: int, user_skew: float, arrival_max: float,
             variant_spec: tuple[str, float] | None, variant_draw: int, in_time: bool, time_scale: float,
             class_priority: dict[str, int] | None, preempt_grace: int | None, cluster_fraction: float,
             plot_path: Path | None, as_json: bool) -> None:
    """Replay a GPU trace through the placement policies and compare how full they pack the GPUs.

    Follows the FGD paper's protocol: shuffled tasks inflated to --arrival-max of GPU capacity,
    random node order, no departures, a task that fits nowhere is dropped. The headline is the GPU
    allocation ratio when arrivals reach the maximum.

    With --time, tasks arrive at their creation times, wait while nothing fits, run for their traced
    run times and leave, decided by the placement daemon's own path; the figures are queueing delay
    per class, GPU allocation over time and what ran, beside Slurm's own scheduling.
    """
    if not in_time and (time_scale != 1.0 or cluster_fraction != 1.0 or class_priority or preempt_grace is not None):
        raise click.UsageError("--time-scale, --cluster-fraction, --class-priority and --preempt-grace need --time")
    if in_time and variant_spec is not None:
        raise click.UsageError("--variant redraws tasks without their times: use it without --time")
    # Imported here: the simulator needs numpy (the `sim` extra), which a node or controller
    # install (pip install slurm-vgpu, the Ansible roles) does not have; every other command works.
    from ..sim.experiment import seeds_for, simulate as run_simulation
    from ..sim.metrics import summary
    from ..sim.report import plot_allocation, print_table

    nodes_path = nodes_path or default_trace(DEFAULT_NODES)
    pods_path = pods_path or default_trace(DEFAULT_PODS)
    try:
        cluster = load_nodes(nodes_path)
        pods = load_timed_pods(pods_path) if in_time else load_pods(pods_path)
    except FileNotFoundError as err:
        raise click.BadParameter(f"{err.filename}: no such file") from None
    except TraceError as err:
        raise click.UsageError(f"malformed trace:\n{err}") from None
    if not cluster.gpus or not pods:
        raise click.UsageError(f"nothing to replay: {len(cluster.gpus)} GPUs in {nodes_path}, "
                               f"{len(pods)} tasks in {pods_path}")
    if variant_spec is not None:
        from ..sim.variants import VariantError, node_models, variant
        try:
            pods = variant(pods, *variant_spec, node_models(cluster), variant_draw)
        except VariantError as err:
            raise click.UsageError(str(err)) from None
    if in_time:
        _simulate_in_time(cluster, pods, policies, seeds, users, user_skew, time_scale, cluster_fraction,
                          class_priority, preempt_grace, plot_path, as_json,
                          {"nodes": Path(nodes_path).name, "pods": Path(pods_path).name})
        return
    with Progress(transient=True, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("replaying", total=None)
        runs = run_simulation(cluster, pods, policies, seeds_for(seeds), users, user_skew,
                              arrival_max, lambda n, total: bar.update(task, advance=n, total=total))
    if plot_path is not None:
        plot_allocation(runs, plot_path, arrival_max)
    if as_json:
        click.echo(json.dumps({
            "nodes": Path(nodes_path).name, "pods": Path(pods_path).name, "gpus": len(cluster.gpus),
            "variant": None if variant_spec is None else {"kind": variant_spec[0], "percent": variant_spec[1],
                                                          "draw": variant_draw},
            "tasks": len(pods), "users": users, "user_skew": user_skew,
            "arrival_max": arrival_max, "runs": [asdict(r) for r in runs],
            "summary": summary(runs),
        }, indent=2))
    else:
        print_table(runs, arrival_max, console())  # whole rows when piped


def _simulate_in_time(cluster, pods, policies: list[str], seeds: int, users: int, user_skew: float,
                      time_scale: float, cluster_fraction: float, class_priority: dict[str, int] | None,
                      preempt_grace: int | None, plot_path: Path | None, as_json: bool, files: dict) -> None:
    from ..sim.experiment import SLURM, seeds_for, simulate_in_time
    from ..sim.report import plot_time_allocation, print_time_table
    from ..sim.timeline import compressed

    pods = compressed(pods, time_scale)
    with Progress(transient=True, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("replaying in time", total=None)
        runs = simulate_in_time(cluster, pods, policies, seeds_for(seeds), users, user_skew, cluster_fraction,
                                class_priority, lambda n, total: bar.update(task, advance=n, total=total),
                                preempt_grace)
    if plot_path is not None:
        plot_time_allocation(runs, plot_path)
    if as_json:
        click.echo(json.dumps({
            **files, "tasks": len(pods), "users": users, "user_skew": user_skew, "time_scale": time_scale,
            "cluster_fraction": cluster_fraction, "class_priority": class_priority or {}, "preempt_grace": preempt_grace, "baseline": SLURM, "runs": [asdict(r) for r in runs],
        }, indent=2))
    else:
        print_time_table(runs, console())
