"""``explain JOBID``: the verdict of the daemon's policy, and a reason for every GPU."""
from __future__ import annotations

import sqlalchemy as sa

from .cli_support import cli, fake_slurm, gpu_uuid, insert_inventory, place, slurm_job  # noqa: F401


def rules(doc: dict) -> dict[tuple[str, int], str | None]:
    return {(g["node"], g["index"]): g["rule"] for g in doc["gpus"]}


def test_waiting_job_gets_a_reason_per_gpu(cli, fake_slurm):
    insert_inventory(cli.engine)
    place(cli.engine, 1, "gpu01", 0, share=50)
    assert cli("drain", "gpu01:1", "--reason", "ecc").exit_code == 0
    fake_slurm.set_jobs([slurm_job(70, "vgpu-state=unplaced share=60 class=throughput model=h100")])
    doc = cli.json("explain", "70")
    assert doc["verdict"]["placeable"] is False and doc["verdict"]["never"] is False
    assert rules(doc) == {("gpu01", 0): "share-free", ("gpu01", 1): "available",
                          ("gpu02", 0): "model", ("gpu02", 1): "model"}
    why = {(g["node"], g["index"]): g["why"] for g in doc["gpus"]}
    assert why[("gpu01", 0)] == "50% free; the job needs 60%"
    assert "draining: ecc" in why[("gpu01", 1)]
    assert why[("gpu02", 1)] == "is t4; the job asks for h100"
    text = cli("explain", "70").stdout
    assert text.startswith("Job 70 (root, uid 0, PENDING) asks for vgpu:h100:60, class throughput.")
    assert "It waits: " in text and "50% free; the job needs 60%" in text


def test_another_users_mps_server_is_named(cli, fake_slurm):
    insert_inventory(cli.engine)
    for job, (node, index) in enumerate([("gpu01", 0), ("gpu01", 1), ("gpu02", 0), ("gpu02", 1)], start=1):
        place(cli.engine, job, node, index, share=10, uid=4242)
    fake_slurm.set_jobs([slurm_job(71, "vgpu-state=unplaced share=10 class=throughput")])
    doc = cli.json("explain", "71")
    assert set(rules(doc).values()) == {"user"}
    assert "4242's MPS server" in doc["gpus"][0]["why"]
    assert "another user's MPS server" in doc["verdict"]["reason"]


def test_a_gpu_holding_as_many_slices_as_its_mps_server_takes_is_named(cli, fake_slurm):
    insert_inventory(cli.engine)
    with cli.engine.begin() as conn:  # as MpsMaxClients=2 registers them
        conn.execute(sa.text("UPDATE gpus SET max_clients = 2"))
    job = 1
    for node, index in [("gpu01", 0), ("gpu01", 1), ("gpu02", 0), ("gpu02", 1)]:
        for _ in range(2):
            place(cli.engine, job, node, index, share=1)
            job += 1
    fake_slurm.set_jobs([slurm_job(76, "vgpu-state=unplaced share=1 class=throughput")])
    doc = cli.json("explain", "76")
    assert set(rules(doc).values()) == {"clients"} and not doc["verdict"]["never"]
    assert doc["gpus"][0]["why"] == "holds 2 slices, the most its MPS server takes (2)"
    assert doc["verdict"]["reason"] == ("every eligible GPU with room already holds 2 slices, the most its "
                                        "MPS server takes")


def test_a_job_that_fits_is_told_where(cli, fake_slurm):
    insert_inventory(cli.engine)
    fake_slurm.set_jobs([slurm_job(72, "vgpu-state=unplaced share=30 class=latency model=t4")])
    doc = cli.json("explain", "72")
    assert doc["verdict"]["placeable"] is True
    assert "fits now on gpu02 GPU 1 (t4_1)" in doc["verdict"]["text"]
    assert rules(doc)[("gpu02", 1)] is None


def test_a_job_that_can_never_run_says_so(cli, fake_slurm):
    insert_inventory(cli.engine)
    fake_slurm.set_jobs([slurm_job(73, "vgpu-state=unplaced share=30 class=throughput mem_mib=200000")])
    doc = cli.json("explain", "73")
    assert doc["verdict"]["never"] is True
    assert "Cancel it and resubmit" in doc["verdict"]["text"]
    assert set(rules(doc).values()) == {"memory-size"}


def test_a_placed_job_says_where_it_is(cli, fake_slurm):
    insert_inventory(cli.engine)
    place(cli.engine, 74, "gpu02", 0, share=30, state="pinned")
    fake_slurm.set_jobs([slurm_job(74, f"vgpu-state=pinned share=30 class=throughput gpu={gpu_uuid('gpu02', 0)}")])
    doc = cli.json("explain", "74")
    assert doc["verdict"]["placed"] is True and doc["gpus"] == []
    assert "placed on gpu02 GPU 0 (a100_0)" in doc["verdict"]["text"]


def test_unknown_and_non_vgpu_jobs_exit_1_with_what_to_check(cli, fake_slurm):
    insert_inventory(cli.engine)
    fake_slurm.set_jobs([slurm_job(75, "", state="RUNNING")])
    unknown = cli("explain", "999")
    assert unknown.exit_code == 1 and "not in Slurm's queue" in unknown.stderr and "sacct" in unknown.stderr
    plain = cli("explain", "75")
    assert plain.exit_code == 1 and "asked for no vgpu slice" in plain.stderr
    assert cli("explain", "abc").exit_code == 2


def test_a_job_waiting_for_cpus_beside_its_gpu_is_told_so_counting_jobs_pinned_and_not_started(cli, fake_slurm):
    """gpu02 shows 6 CPUs idle, but a job pinned there and not started yet will take 4 of them."""
    insert_inventory(cli.engine)
    place(cli.engine, 80, "gpu02", 0, share=30, state="pinned")
    fake_slurm.set_nodes(["gpu01|mix|debug*|6/2/0/8|64000|0|", "gpu02|mix|debug*|2/6/0/8|64000|0|"])
    fake_slurm.set_jobs([
        {**slurm_job(80, f"vgpu-state=pinned share=30 class=throughput gpu={gpu_uuid('gpu02', 0)}"), "cpus": 4},
        {**slurm_job(77, "vgpu-state=unplaced share=30 class=throughput"), "cpus": 4}])
    doc = cli.json("explain", "77")
    assert doc["verdict"]["placeable"] is False and doc["verdict"]["never"] is False
    assert doc["verdict"]["reason"] == "needs 4 CPUs on a node with a fitting GPU; the most free is 2"
    why = {(g["node"], g["index"]): (g["rule"], g["why"]) for g in doc["gpus"]}
    assert why[("gpu02", 1)] == ("node", "its node has 2 CPUs free; the job needs 4")
    assert why[("gpu01", 0)] == ("node", "its node has 2 CPUs free; the job needs 4")


def test_a_job_whose_partition_has_no_gpu_node_is_told_so(cli, fake_slurm):
    insert_inventory(cli.engine)
    fake_slurm.set_nodes(["gpu01|idle|debug*|0/8/0/8|64000|0|", "gpu02|idle|debug*|0/8/0/8|64000|0|",
                          "cpu01|idle|cpu|0/8/0/8|64000|0|"])
    fake_slurm.set_jobs([{**slurm_job(78, "vgpu-state=unplaced share=30 class=throughput"), "partition": "cpu"}])
    doc = cli.json("explain", "78")
    assert doc["verdict"]["reason"] == ("Slurm would start it on none of the GPU nodes: its partition (cpu), "
                                        "--constraint, --exclude and --nodelist leave none")
    assert doc["verdict"]["never"] is False and doc["gpus"] == []
