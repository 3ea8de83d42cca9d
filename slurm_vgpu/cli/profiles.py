"""``slurm-vgpu profile`` (measure a workload's curve on real slices) and ``slurm-vgpu profiles``
(list the curves measured).

A profile run submits the workload once per share, each a vgpu job of the latency class (the fewest
co-tenants), one after another (``--dependency=afterany``) so that the run's own shares never share
a GPU. Each job prints its figures (slurm_vgpu.profiles says the line); the curve is stored only
when every share printed them, and replaces the one measured before.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click
import sqlalchemy as sa

from ..adapters.slurm import ENDED_STATES
from ..contract import PROFILE_NAME_MAX, profile_error
from ..db.models import Gpu
from ..db.profiles import save_curve, stored_points
from ..profiles import FIGURES_EXAMPLE, FiguresError, Point, curves, knee, last_figures
from ..slo import SloError, choose, parse_target
from .output import Column, echo_json, document, emit, json_option
from .runtime import Runtime, pass_runtime, slurm_errors

DEFAULT_SHARES = "10,20,30,50,70,100"
POLL_S = 2.0

COLUMNS = (
    Column("NAME", lambda r: r["name"]),
    Column("MODEL", lambda r: r["model"]),
    Column("BATCH", lambda r: r["batch"], "right"),
    Column("SHARE", lambda r: r["share"], "right"),
    Column("THROUGHPUT/S", lambda r: f"{r['throughput']:g}", "right"),
    Column("P50 MS", lambda r: f"{r['p50_ms']:g}", "right"),
    Column("P99 MS", lambda r: f"{r['p99_ms']:g}", "right"),
    Column("KNEE", lambda r: "knee" if r["knee"] else ""),
    Column("JOBID", lambda r: r["job_id"], "right"),
    Column("MEASURED", lambda r: r["measured_at"]),
)

MEETING_COLUMNS = (
    Column("NAME", lambda r: r["name"]),
    Column("TARGET", lambda r: r["target"]),
    Column("MODEL", lambda r: r["model"]),
    Column("SHARE", lambda r: r["share"], "right"),
    Column("BATCH", lambda r: r["batch"], "right"),
    Column("P99 MS", lambda r: f"{r['p99_ms']:g}", "right"),
    Column("THROUGHPUT/S", lambda r: f"{r['throughput']:g}", "right"),
    Column("COST", lambda r: f"{r['cost']:g}", "right"),
)


def parse_shares(value: str) -> list[int]:
    try:
        shares = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        shares = []
    if not shares or not all(1 <= s <= 100 for s in shares):
        raise click.BadParameter(f"{value!r}: write percentages of a GPU's SMs from 1 to 100, e.g. {DEFAULT_SHARES}",
                                 param_hint="--shares")
    return shares


@click.command("profile", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--model", required=True, help="GPU model to measure on, as users write it in --gres=vgpu:MODEL:N.")
@click.option("--shares", default=DEFAULT_SHARES, show_default=True, help="SM shares to measure (percent).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where each share's job writes its output [default: ./slurm-vgpu-profile-NAME-MODEL].")
@click.option("--sbatch", "sbatch_options", multiple=True, metavar="OPTION",
              help="An sbatch option for every job, e.g. --sbatch=--partition=gpu (repeatable).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Draw the curve into this PNG.")
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_runtime
def profile(rt: Runtime, name: str, model: str, shares: str, output_dir: Path | None, sbatch_options: tuple[str, ...],
            plot: Path | None, as_json: bool, command: tuple[str, ...]) -> None:
    """Measure workload NAME on GPU model MODEL at each share: run COMMAND (after --) as one vgpu job
    per share and store the figures it prints, e.g.

        slurm-vgpu profile resnet50 --model h100 -- python serve_bench.py

    COMMAND prints its figures on a line of its output:
    "slurm-vgpu: throughput=412.5/s p50_ms=9.1 p99_ms=18.2" (optionally batch=8)."""
    if profile_error(name) is not None:
        raise click.BadParameter(f"{name!r}: a workload name is letters, digits, '.', '_' and '-' "
                                 f"(up to {PROFILE_NAME_MAX}), e.g. resnet50", param_hint="NAME")
    share_list = parse_shares(shares)
    model = model.lower()
    with rt.session() as session:
        models = sorted(session.scalars(sa.select(Gpu.model).where(Gpu.state == "up").distinct()))
    if model not in models:
        raise click.BadParameter(f"no GPU of model {model!r} is up; the cluster has {', '.join(models) or 'none'}",
                                 param_hint="--model")
    out_dir = (output_dir or Path(f"slurm-vgpu-profile-{name}-{model}")).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    slurm = rt.slurm()
    jobs: dict[int, int] = {}  # share -> job id
    try:
        with slurm_errors():
            for share in share_list:
                after = [f"--dependency=afterany:{jobs[prev]}" for prev in jobs][-1:]
                jobs[share] = slurm.submit(
                    f"--gres=vgpu:{model}:{share}", "--vgpu-class=latency", f"--job-name=profile-{name}-{share}",
                    f"--output={out_dir / f'{share}.out'}", *after, *sbatch_options, command=shlex.join(command))
            states = _wait(slurm, name, model, jobs)
    except (KeyboardInterrupt, click.ClickException):
        _cancel(slurm, jobs)
        raise
    points, problems = [], []
    for share, job_id in jobs.items():
        out = out_dir / f"{share}.out"
        state = states.get(job_id, "ended")
        try:
            figures = last_figures(out.read_text(errors="replace")) if out.exists() else None
        except FiguresError as exc:
            problems.append(f"{share}% (job {job_id}, {state}): {exc}")
            continue
        if state != "COMPLETED":
            problems.append(f"{share}% (job {job_id}) ended {state}; its output: {out}")
        elif figures is None:
            problems.append(f"{share}% (job {job_id}) printed no figures line; print e.g. {FIGURES_EXAMPLE!r} "
                            f"(its output: {out})")
        else:
            points.append(Point(name, model, share, figures))
    if problems:
        raise click.ClickException("nothing stored: " + "; ".join(problems))
    with rt.session() as session:
        save_curve(session, points, [jobs[p.share] for p in points])
        records = [_record(point, row, knees) for knees in [_knees(points)]
                   for point, row in stored_points(session, [name]) if point.model == model]
    if plot is not None:
        draw(points, plot)
    if as_json:
        echo_json(document(profiles=records))
    else:
        emit(False, "profiles", records, COLUMNS, "")


@click.command("profiles")
@click.argument("names", nargs=-1)
@click.option("--slo", "target_text", metavar="TARGET",
              help="Instead, the share each GPU model needs to meet this target, e.g. p99:50ms,rate:200/s.")
@json_option
@pass_runtime
def profiles(rt: Runtime, names: tuple[str, ...], target_text: str | None, as_json: bool) -> None:
    """List the measured curves (of NAMES when given): each point's figures, the knee of each curve
    (where more SMs stop helping) marked. With --slo, the smallest measured share of each GPU model
    that meets the target, cheapest first (share times the model's speed)."""
    if target_text is not None:
        return _meeting(rt, names, target_text, as_json)
    with rt.session() as session:
        stored = stored_points(session, list(names) or None)
        knees = _knees([point for point, _ in stored])
        records = [_record(point, row, knees) for point, row in stored]
    emit(as_json, "profiles", records, COLUMNS,
         "no profiles" + (f" of {', '.join(names)}" if names else "") + "; measure one with: slurm-vgpu profile NAME "
         "--model MODEL -- COMMAND")


def _meeting(rt: Runtime, names: tuple[str, ...], target_text: str, as_json: bool) -> None:
    try:
        target = parse_target(target_text)
    except SloError as exc:
        raise click.BadParameter(str(exc), param_hint="--slo") from None
    if not names:
        raise click.BadParameter("--slo needs the workload's NAME, e.g. slurm-vgpu profiles resnet50 --slo "
                                 f"{target_text}", param_hint="--slo")
    with rt.session() as session:
        speeds = dict(session.execute(sa.select(Gpu.model, sa.func.max(Gpu.speed)).group_by(Gpu.model)).all())
        stored = [point for point, _ in stored_points(session, list(names))]
    records, unmet = [], []
    for name in names:
        choice = choose([p for p in stored if p.name == name], target, speeds)
        unmet += [choice.reason(name, target)] if not choice.options else []
        records += [{"name": name, "target": str(target), "model": o.model, "share": o.share,
                     "batch": o.point.figures.batch, "p99_ms": o.point.p99_ms, "throughput": o.point.throughput,
                     "cost": round(o.cost, 3)} for o in choice.options]
    emit(as_json, "meeting", records, MEETING_COLUMNS, "")
    if unmet:
        raise click.ClickException("; ".join(unmet))


def _knees(points: list[Point]) -> set[Point]:
    return {k for curve in curves(points).values() if (k := knee(curve)) is not None}


def _record(point: Point, row, knees: set[Point]) -> dict:
    return {"name": point.name, "model": point.model, "batch": point.figures.batch, "share": point.share,
            "throughput": point.throughput, "p50_ms": point.figures.p50_ms, "p99_ms": point.p99_ms,
            "knee": point in knees, "job_id": row.job_id, "measured_at": row.measured_at}


def _wait(slurm, name: str, model: str, jobs: dict[int, int]) -> dict[int, str]:
    """Until every job has ended, printing progress on stderr when it changes; their last states."""
    last: dict[int, str] = {}
    said = ""
    while True:
        known = slurm.states(list(jobs.values()))
        last.update(known)
        ended = [s for s, j in jobs.items() if last.get(j) in ENDED_STATES or (j in last and j not in known)]
        running = [s for s, j in jobs.items() if known.get(j) in ("RUNNING", "CONFIGURING", "COMPLETING")]
        progress = (f"profile {name} on {model}: {len(ended)} of {len(jobs)} shares done"
                    + (f", running {running[0]}%" if running else ""))
        if progress != said:
            click.echo(progress, err=True)
            said = progress
        if len(ended) == len(jobs):
            return last
        time.sleep(POLL_S)


def _cancel(slurm, jobs: dict[int, int]) -> None:
    if jobs:
        try:
            slurm.scancel(list(jobs.values()))
        except Exception as exc:  # noqa: BLE001 - already failing: say what is left, keep the first error
            print(f"could not cancel jobs {', '.join(map(str, jobs.values()))}: {exc}", file=sys.stderr)


def draw(points: list[Point], path: Path) -> None:
    """Throughput and p99 against the share, the knee marked (matplotlib, the `sim` extra)."""
    import matplotlib.pyplot as plt

    from ..sim.report import new_figure

    fig, ax = new_figure()
    shares = [p.share for p in points]
    ax.plot(shares, [p.throughput for p in points], marker="o", label="throughput (/s)")
    ax.set_xlabel("SM share (%)")
    ax.set_ylabel("throughput (/s)")
    right = ax.twinx()
    right.plot(shares, [p.p99_ms for p in points], marker="s", color="tab:red", label="p99 (ms)")
    right.set_ylabel("p99 latency (ms)")
    k = knee(points)
    if k is not None:
        ax.axvline(k.share, color="grey", linestyle=":", linewidth=0.8)
    first = points[0]
    ax.set_title(f"{first.name} on {first.model} (batch {first.figures.batch})")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
