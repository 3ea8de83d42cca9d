"""Variants of a pod list (``simulate --variant``): the list, then tasks drawn from it until the part
asked for is reached, as the dataset's own variants are built."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from slurm_vgpu.cli.simulate import simulate as simulate_cmd
from slurm_vgpu.policy.model import Request
from slurm_vgpu.sim.trace import load_nodes
from slurm_vgpu.sim.variants import VariantError, node_models, parse_variant, variant

MODELS = ["T4"] * 6 + ["A10"] * 2  # one per node


def pods() -> list[Request]:
    """100 tasks: 60 whole GPUs, 25 shares, 5 of 4 GPUs, 10 CPU-only."""
    out = [Request(f"w{i}", 1000, cpu_milli=8000) for i in range(60)]
    out += [Request(f"s{i}", 250 + 10 * i, cpu_milli=2000) for i in range(25)]
    out += [Request(f"m{i}", 1000, gpus=4, cpu_milli=32000) for i in range(5)]
    out += [Request(f"c{i}", 0, cpu_milli=16000) for i in range(10)]
    return out


def multi_part(ps) -> float:
    gpu = [p.gpus * p.share for p in ps if p.share]
    return 100 * sum(p.gpus * p.share for p in ps if p.gpus > 1) / sum(gpu)


def test_multigpu_appends_multi_gpu_tasks_of_the_list_until_its_part_is_reached():
    base = pods()
    assert multi_part(base) < 25
    v = variant(base, "multigpu", 50, MODELS)
    assert v[:len(base)] == base
    added = v[len(base):]
    assert added and all(p.gpus == 4 and p.cpu_milli == 32000 for p in added)
    assert 50 <= multi_part(v) < 53  # stops at the first task that reaches it
    assert len({p.job_id for p in v}) == len(v)


def test_gpushare_goes_both_ways():
    fewer = variant(pods(), "gpushare", 20, MODELS)
    assert all(p.share == 1000 for p in fewer[100:]) and len(fewer) > 100
    shares = [p for p in fewer if 0 < p.share < 1000]
    assert 19 < 100 * len(shares) / len([p for p in fewer if p.share]) <= 20  # reached from above
    everything = variant(pods(), "gpushare", 100, MODELS)  # no number of added shares reaches 100%
    assert all(0 < p.share < 1000 and p.gpus == 1 for p in everything if p.share)
    assert len([p for p in everything if not p.share]) == 10  # CPU-only tasks are not GPU tasks
    none = variant(pods(), "gpushare", 0, MODELS)
    assert len(none) == 75 and not [p for p in none if 0 < p.share < 1000]


def test_cpu_sets_cpu_only_tasks_cpu_against_the_gpu_tasks():
    v = variant(pods(), "cpu", 200, MODELS)
    cpu_only = sum(p.cpu_milli for p in v if not p.share)
    gpu = sum(p.cpu_milli for p in v if p.share)
    assert 200 <= 100 * cpu_only / gpu < 230


def test_gpuspec_ties_that_part_of_gpu_tasks_to_a_model_of_the_cluster(tmp_path):
    nodes = tmp_path / "n.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,4,T4\nb,64000,262144,2,A10\n"
                     "c,8000,65536,1,T4\n")
    assert node_models(load_nodes(nodes)) == ["T4", "A10", "T4"]  # drawn per node, not per GPU
    v = variant(pods(), "gpuspec", 33, MODELS)
    tied = [p for p in v if p.models]
    assert len(tied) == round(90 * 0.33) and all(p.share for p in tied)
    assert all(len(p.models) == 1 and p.models <= set(MODELS) for p in tied)


def test_draws_differ_and_each_draw_is_the_same_every_time():
    assert variant(pods(), "gpushare", 60, MODELS, 1) == variant(pods(), "gpushare", 60, MODELS, 1)
    assert variant(pods(), "gpushare", 60, MODELS, 1) != variant(pods(), "gpushare", 60, MODELS, 2)


def test_a_kind_the_list_lacks_is_refused_with_what_to_do():
    with pytest.raises(VariantError, match="no task of the kind 'multigpu'.*--pods"):
        variant([p for p in pods() if p.gpus == 1], "multigpu", 30, MODELS)


@pytest.mark.parametrize("spec", ["multigpu", "multigpu:x", "gpushare:120", "tetris:10", "cpu:-5"])
def test_a_malformed_variant_says_what_to_write(spec):
    with pytest.raises(VariantError, match="write KIND:PERCENT .* e.g. multigpu:50"):
        parse_variant(spec)


def test_cli_replays_the_variant_and_names_it_in_json(tmp_path):
    nodes = tmp_path / "n.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nx,64000,262144,4,T4\ny,64000,262144,4,T4\n")
    plist = tmp_path / "p.csv"
    plist.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                     + "".join(f"p{i},4000,8192,1,{300 + 100 * (i % 5)}\n" for i in range(8))
                     + "q,8000,8192,2,1000\n")
    args = ["--nodes", str(nodes), "--pods", str(plist), "--policies", "fgd", "--json"]
    result = CliRunner().invoke(simulate_cmd, args + ["--variant", "multigpu:60"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["variant"] == {"kind": "multigpu", "percent": 60.0, "draw": 0}
    plain = json.loads(CliRunner().invoke(simulate_cmd, args).stdout)
    assert data["runs"][0]["curve"] != plain["runs"][0]["curve"]  # the variant is what was replayed
    refused = CliRunner().invoke(simulate_cmd, args + ["--variant", "multigpu:60", "--time"])
    assert refused.exit_code == 2 and "without --time" in refused.output
