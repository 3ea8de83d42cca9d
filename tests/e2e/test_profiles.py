"""``slurm-vgpu profile`` on a real Slurm: one vgpu job per share, each on its own slice, the curve
stored whole; and jobs of a latency target placed on the smallest measured share that meets it. The workload models a GPU and measures nothing: it prints figures computed from the
thread percentage its slice gave it (throughput 500 (1 - e^(-p/20)), p99 8 + 300/p ms), so the
stored curve follows the slices the jobs really got."""
from __future__ import annotations

import json
import math
import re
import sys

import pytest
import sqlalchemy as sa

from ..conftest import slurm
from .jobs import ensure_user, output, output_dir, submit, submit_fails, wait_for

pytestmark = pytest.mark.e2e

WORKLOAD = ('p=${CUDA_MPS_ACTIVE_THREAD_PERCENTAGE:?no slice}; awk -v p="$p" \'BEGIN { '
            'printf "slurm-vgpu: throughput=%.1f/s p50_ms=%.2f p99_ms=%.2f\\n", '
            '500 * (1 - exp(-p / 20)), 4 + 150 / p, 8 + 300 / p }\'')


def vgpu(cluster, *args: str):
    return slurm(cluster, sys.executable, "-m", "slurm_vgpu", *args, check=False)


def test_a_profile_run_measures_each_share_on_its_own_slice_and_stores_the_curve(cluster):
    out = output_dir(cluster) / "profile-synthetic"
    result = vgpu(cluster, "profile", "synthetic", "--model", "h100", "--shares", "20,50,100",
                  "--output-dir", str(out), "--json", "--", "sh", "-c", WORKLOAD)
    assert result.returncode == 0, result.stderr
    assert "synthetic on h100: 3 of 3 shares done" in result.stderr  # progress while the jobs run
    measured = json.loads(result.stdout)["profiles"]
    assert [(p["share"], p["throughput"], p["p99_ms"]) for p in measured] == [
        (s, round(500 * (1 - math.exp(-s / 20)), 1), round(8 + 300 / s, 2)) for s in (20, 50, 100)]
    assert [p["share"] for p in measured if p["knee"]] == [50]  # 459/s is within 90% of 497/s
    assert len({p["job_id"] for p in measured}) == 3
    listed = json.loads(vgpu(cluster, "profiles", "synthetic", "--json").stdout)["profiles"]
    assert [(p["share"], p["throughput"]) for p in listed] == [(p["share"], p["throughput"]) for p in measured]
    # p99 at 20% is 23 ms, at 50% 14 ms: a 20 ms target needs 50%; 400/s with 20% headroom needs 500/s
    meeting = json.loads(vgpu(cluster, "profiles", "synthetic", "--slo", "p99:20ms", "--json").stdout)["meeting"]
    assert [(m["model"], m["share"]) for m in meeting] == [("h100", 50)]
    unmet = vgpu(cluster, "profiles", "synthetic", "--slo", "p99:20ms,rate:400/s")
    assert unmet.returncode == 1 and "the best is h100 at 100% (p99 11 ms, 496.6/s)" in unmet.stderr


def test_a_workload_that_prints_no_figures_stores_nothing_and_says_what_to_print(cluster):
    out = output_dir(cluster) / "profile-silent"
    result = vgpu(cluster, "profile", "silent", "--model", "t4", "--shares", "10,30", "--output-dir", str(out),
                  "--", "echo", "hello")
    assert result.returncode == 1
    assert "nothing stored" in result.stderr and "printed no figures line" in result.stderr
    assert "slurm-vgpu: throughput=412.5/s" in result.stderr
    listed = vgpu(cluster, "profiles", "silent", "--json")
    assert json.loads(listed.stdout)["profiles"] == []


@pytest.mark.parametrize("args, says", [
    (["--model", "h999"], "no GPU of model 'h999' is up; the cluster has a100, h100, t4"),
    (["--model", "h100", "--shares", "0,50"], "percentages of a GPU's SMs from 1 to 100"),
    (["--model", "h100", "--shares", "fast"], "percentages of a GPU's SMs from 1 to 100"),
])
def test_bad_profile_input_is_refused_before_any_job(cluster, args, says):
    result = vgpu(cluster, "profile", "bad", *args, "--", "true")
    assert result.returncode == 2 and says in result.stderr
    assert "profile-bad" not in slurm(cluster, "squeue", "--noheader", "--format=%j").stdout


def store_curve(engine, name: str, model: str, curve: dict[int, tuple[float, float]], batch: int = 1) -> None:
    """A measured curve, written as `slurm-vgpu profile` would: share -> (throughput, p99)."""
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM profiles WHERE name = :name AND model = :model AND batch = :batch"),
                     {"name": name, "model": model, "batch": batch})
        for share, (throughput, p99) in curve.items():
            conn.execute(sa.text("INSERT INTO profiles (name, model, share, batch, throughput, p50_ms, p99_ms) "
                                 "VALUES (:name, :model, :share, :batch, :throughput, :p99 / 2, :p99)"),
                         dict(name=name, model=model, share=share, batch=batch, throughput=throughput, p99=p99))


def test_a_job_of_a_latency_target_runs_on_the_smallest_share_that_meets_it(cluster, cluster_engine):
    store_curve(cluster_engine, "curve", "h100", {20: (316.1, 23.0), 50: (458.9, 14.0), 100: (496.6, 11.0)})
    ensure_user("vgpu-slo")
    job_id = submit(cluster, "--gres=vgpu:80", "--vgpu-class=latency", "--vgpu-profile=curve", "--vgpu-slo=p99:20ms",
                    script="echo share=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", user="vgpu-slo")
    done = wait_for(cluster, [job_id])[job_id]
    assert done["JobState"] == "COMPLETED"
    assert "share=50" in output(cluster, job_id)  # 20% misses 20 ms; 50% is the smallest that meets it
    assert re.fullmatch(r"gres:vgpu:h100_\d:50", done["TresPerNode"]), done["TresPerNode"]
    with cluster_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT share FROM placements WHERE job_id = :j"), {"j": job_id}).scalar() == 50


def test_a_target_no_measured_share_meets_fails_with_the_best_there_is(cluster, cluster_engine):
    store_curve(cluster_engine, "slowcurve", "h100", {50: (100.0, 40.0), 100: (150.0, 30.0)})
    job_id = submit(cluster, "--gres=vgpu:100", "--vgpu-profile=slowcurve", "--vgpu-slo=p99:20ms", script="true")
    done = wait_for(cluster, [job_id])[job_id]
    assert done["JobState"] == "CANCELLED"
    assert "the best is h100 at 100% (p99 30 ms" in done["AdminComment"]
    unknown = submit(cluster, "--gres=vgpu:30", "--vgpu-profile=nosuch", "--vgpu-slo=p99:20ms", script="true")
    assert "no profile of 'nosuch'" in wait_for(cluster, [unknown])[unknown]["AdminComment"]


@pytest.mark.parametrize("options, says", [
    (["--gres=vgpu:30", "--vgpu-profile=curve", "--vgpu-slo=p99:fast"], "write --vgpu-slo=p99:LATENCY"),
    (["--gres=vgpu:30", "--vgpu-profile=curve", "--vgpu-slo=p99:0ms"], "write --vgpu-slo=p99:LATENCY"),
    (["--gres=vgpu:30", "--vgpu-profile=-curve", "--vgpu-slo=p99:20ms"], "write --vgpu-profile=NAME"),
    (["--gres=vgpu:30", "--vgpu-slo=p99:20ms"], "write --vgpu-profile=NAME and --vgpu-slo=TARGET together"),
    (["--gres=gpu:1", "--vgpu-profile=curve", "--vgpu-slo=p99:20ms"], "write --gres=vgpu:N with --vgpu-profile"),
    (["--vgpu-profile=curve", "--vgpu-slo=p99:20ms"], "describe a GPU slice; add --gres=vgpu:N"),
])
def test_a_bad_target_is_refused_at_submit_saying_what_to_write(cluster, options, says):
    ensure_user("vgpu-slo")
    assert says in submit_fails(cluster, *options, user="vgpu-slo")
