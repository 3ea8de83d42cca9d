"""``gpus``, ``nodes``, ``placements``, ``jobs`` against real Postgres rows."""
from __future__ import annotations

import json

from click.testing import CliRunner

from slurm_vgpu.cli import main

from .cli_support import cli, fake_slurm, gpu_uuid, insert_inventory, place, slurm_job  # noqa: F401


def test_gpus_json_sums_active_placements_per_gpu(cli):
    insert_inventory(cli.engine)
    place(cli.engine, 1, "gpu01", 0, share=30, memory_mib=8192, slo_class="latency")
    place(cli.engine, 2, "gpu01", 0, share=20, state="pinned")
    place(cli.engine, 3, "gpu01", 0, share=50, state="placed")
    place(cli.engine, 4, "gpu01", 1, share=90, state="released")  # over: holds nothing
    doc = cli.json("gpus")
    assert doc["meta"]["slurm_vgpu"]["version"]
    by_uuid = {g["uuid"]: g for g in doc["gpus"]}
    full = by_uuid[gpu_uuid("gpu01", 0)]
    assert (full["share_used"], full["share_free"], full["memory_placed_mib"], full["slices"]) == (100, 0, 8192, 3)
    assert full["mps_users"] == [{"uid": 0, "name": "root"}]
    assert full["slo_classes"] == ["latency", "throughput", "throughput"]
    idle = by_uuid[gpu_uuid("gpu01", 1)]
    assert (idle["share_used"], idle["mps_users"], idle["unavailable_reason"]) == (0, [], None)
    assert [(g["node"], g["index"], g["model"]) for g in doc["gpus"]] == [
        ("gpu01", 0, "h100"), ("gpu01", 1, "h100"), ("gpu02", 0, "a100"), ("gpu02", 1, "t4")]


def test_gpus_node_option_takes_a_hostlist(cli):
    insert_inventory(cli.engine)
    assert {g["node"] for g in cli.json("gpus", "--node", "gpu[02]")["gpus"]} == {"gpu02"}
    assert len(cli.json("gpus", "-n", "gpu[01-02]")["gpus"]) == 4
    bad = cli("gpus", "--node", "gpu[02")
    assert bad.exit_code == 2
    assert "'[' without ']'" in bad.stderr


def test_gpus_table_shows_use_and_why_a_gpu_takes_no_slices(cli):
    insert_inventory(cli.engine, heartbeat_age_s={"gpu02": 300})
    place(cli.engine, 1, "gpu01", 0, share=30, memory_mib=2048)
    result = cli("gpus")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "IDX", "GRES", "TYPE"]
    row = next(line for line in lines if "h100_0" in line)
    assert "30/100" in row and "root(0)" in row and "2.0G/79.6G" in row
    silent = next(line for line in lines if "t4_1" in line)
    assert " up* " in silent and "agent silent for 300s" in silent
    assert all(line == line.rstrip() for line in lines), "no trailing blanks for scripts to trip on"


def test_nodes_report_heartbeat_age_and_gpu_mix(cli):
    insert_inventory(cli.engine, heartbeat_age_s={"gpu02": 120})
    place(cli.engine, 1, "gpu02", 1, share=40)
    nodes = {n["name"]: n for n in cli.json("nodes")["nodes"]}
    assert nodes["gpu01"]["state"] == "up" and nodes["gpu01"]["heartbeat_age_s"] < 30
    assert nodes["gpu02"]["state"] == "silent"
    assert "no heartbeat for 120s" in nodes["gpu02"]["reason"]
    assert nodes["gpu02"]["models"] == {"a100": 1, "t4": 1}
    assert (nodes["gpu02"]["share_used"], nodes["gpu02"]["share_total"]) == (40, 200)


def test_empty_inventory_prints_a_hint_on_stderr_and_an_empty_list_as_json(cli):
    result = cli("nodes")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no nodes registered" in result.stderr
    assert cli.json("nodes")["nodes"] == []


def test_placements_default_to_active_and_filter(cli):
    insert_inventory(cli.engine)
    place(cli.engine, 11, "gpu01", 0, share=30)
    place(cli.engine, 12, "gpu02", 1, share=30, state="failed")
    place(cli.engine, 13, "gpu02", 0, share=30, uid=1000, state="pinned")
    assert sorted(p["job_id"] for p in cli.json("placements")["placements"]) == [11, 13]
    assert sorted(p["job_id"] for p in cli.json("placements", "--all")["placements"]) == [11, 12, 13]
    assert [p["job_id"] for p in cli.json("placements", "--node", "gpu02")["placements"]] == [13]
    assert [p["job_id"] for p in cli.json("placements", "--user", "1000")["placements"]] == [13]
    assert [p["job_id"] for p in cli.json("placements", "--state", "failed")["placements"]] == [12]
    record = cli.json("placements", "--job", "11")["placements"][0]
    assert (record["node"], record["gpu_index"], record["gres_type"], record["user"]) == ("gpu01", 0, "h100_0", "root")
    assert cli("placements", "--job", "x1").exit_code == 2
    assert cli("placements", "--user", "no-such-user-here").exit_code == 2


def test_jobs_join_slurm_queue_with_placements(cli, fake_slurm):
    insert_inventory(cli.engine)
    place(cli.engine, 21, "gpu01", 1, share=40, state="pinned")
    fake_slurm.set_jobs([
        slurm_job(21, f"vgpu-state=pinned share=40 class=throughput gpu={gpu_uuid('gpu01', 1)}"),
        slurm_job(22, 'vgpu-state=unplaced share=60 class=latency mem_mib=4096 wait="every GPU is busy"'),
        slurm_job(23, "", state="RUNNING"),  # not a vgpu job
    ])
    jobs = {j["job_id"]: j for j in cli.json("jobs")["jobs"]}
    assert set(jobs) == {21, 22}
    assert jobs[21]["placement"]["gres_type"] == "h100_1"
    assert jobs[22]["placement"] is None and jobs[22]["wait"] == "every GPU is busy"
    assert [j["job_id"] for j in cli.json("jobs", "--node", "gpu01")["jobs"]] == [21]
    table = cli("jobs").stdout
    assert "every GPU is busy" in table and "h100_1" in table


def test_dead_database_names_the_url_and_exits_1(tmp_path):
    config = tmp_path / "slurm-vgpu.conf"
    config.write_text("DatabaseUrl=postgresql+psycopg://postgres@127.0.0.1:1/nowhere\n")
    result = CliRunner().invoke(main, ["--config", str(config), "gpus"], env={"SLURM_VGPU_DATABASE_URL": ""})
    assert result.exit_code == 1
    assert "cannot reach Postgres at postgresql+psycopg://postgres@127.0.0.1:1/nowhere" in result.stderr
    assert f"DatabaseUrl= in {config}" in result.stderr
    assert result.stdout == ""


def test_json_is_valid_for_every_read_command(cli, fake_slurm):
    for command in (["gpus"], ["nodes"], ["placements"], ["jobs"]):
        result = cli(*command, "--json")
        assert result.exit_code == 0, result.output
        assert set(json.loads(result.stdout)) == {"meta", command[0]}
