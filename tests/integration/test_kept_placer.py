"""The placement daemon's kept placer against a real Postgres: it measures against the recent
placements, keeps its view between cycles (taking what others committed), and is rebuilt when its
workload is stale or was empty; its write goes through the capacity guard, and a cycle writes its
decisions as it makes them."""
from __future__ import annotations

import dataclasses
import gc
import time

import pytest
import sqlalchemy as sa

from slurm_vgpu.config import Config
from slurm_vgpu.db import engine as db
from slurm_vgpu.db import store
from slurm_vgpu.db.writer import PlacementWriter, placement_writer
from slurm_vgpu.placement.cycle import KeptPlacer, commit_as_decided, placement_rows
from slurm_vgpu.policy import Request

from .test_schema import add_gpu, place


@pytest.fixture
def two_gpus(clean_db):
    add_gpu(clean_db, "GPU-0")
    add_gpu(clean_db, "GPU-1")
    with db.session_scope(clean_db) as s:
        store.heartbeat(s, "node1")
    yield clean_db
    gc.unfreeze()  # a placer build freezes the process's objects, as it does in the daemon


def cycle(engine, kept: KeptPlacer, requests: list[Request]):
    with db.session_scope(engine) as s:
        placer = kept.for_cycle(s, requests)
    result = placer.place(requests)
    with placement_writer(engine) as writer:
        rows = writer.write(placement_rows(result.decisions, {r.job_id: r for r in requests}))
    return placer, result, [row["job_id"] for row in rows]


def test_the_placer_is_kept_between_cycles_and_sees_what_others_placed(two_gpus):
    kept = KeptPlacer(Config())
    first, result, ids = cycle(two_gpus, kept, [Request("1", 60, user=1000)])
    assert set(ids) == {1} and first.typical  # built on the waiting request
    gpu = result.decisions[0].gpu_uuids[0]
    other = "GPU-1" if gpu == "GPU-0" else "GPU-0"
    place(two_gpus, 2, 70, uid=2000, gpu=other)  # another writer fills the other GPU
    second, result, _ = cycle(two_gpus, kept, [Request("3", 50, user=3000)])
    assert second is first
    assert result.decisions == () and "3" in {b.job_id for b in result.blocked}  # 40 and 30 left
    with db.session_scope(two_gpus) as s:
        assert {g.uuid: g.used for g in second.state.views[0].gpus} == \
            {g.uuid: g.used for g in store.gpu_states(s, 30)}


def test_a_placer_built_on_nothing_is_rebuilt_on_the_first_requests_and_on_recent_placements(two_gpus):
    kept = KeptPlacer(Config())
    empty, _, _ = cycle(two_gpus, kept, [])
    assert not empty.typical
    place(two_gpus, 7, 30, uid=1000, gpu="GPU-0")
    built, _, _ = cycle(two_gpus, kept, [Request("8", 20, user=1000)])
    assert built is not empty
    assert {(t.share, t.gpus) for t in built.typical} == {(30, 1), (20, 1)}


def test_a_stale_placer_is_rebuilt(two_gpus):
    kept = KeptPlacer(dataclasses.replace(Config(), workload_refresh=0.0))
    first, _, _ = cycle(two_gpus, kept, [Request("1", 30)])
    second, _, _ = cycle(two_gpus, kept, [Request("2", 30)])
    assert second is not first


def test_a_batch_the_guard_refuses_writes_nothing(two_gpus):
    rows = [dict(job_id=job, gpu_uuid="GPU-0", uid=1000, share=60, requested_share=60, memory_mib=None,
                 slo_class="throughput", state="placed") for job in (1, 2)]
    with placement_writer(two_gpus) as writer:
        with pytest.raises(sa.exc.IntegrityError, match="0 of 100 vgpu units placed; 120 more does not fit"):
            writer.write(rows)
        assert not writer.busy
    with two_gpus.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM placements")) == 0


def test_the_placement_role_writes_placements_and_the_node_role_cannot(two_gpus):
    """The writer needs only what the daemon's least-privilege role has (INSERT, and SELECT for the
    ids it returns); a role without INSERT is refused and writes nothing."""
    row = dict(job_id=1, gpu_uuid="GPU-0", uid=1000, share=30, requested_share=30, memory_mib=4096,
               slo_class="latency", state="placed")
    with two_gpus.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        try:
            conn.execute(sa.text("SET ROLE slurm_vgpu_node"))
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied for table placements"):
                PlacementWriter(conn).write([row])
            conn.execute(sa.text("SET ROLE slurm_vgpu_placement"))
            (written,) = PlacementWriter(conn).write([row])
        finally:
            conn.execute(sa.text("RESET ROLE"))  # the connection goes back to the pool
    with two_gpus.connect() as conn:
        stored = conn.execute(sa.text("SELECT id, job_id, gpu_uuid, uid, share, requested_share, memory_mib, "
                                      "slo_class, state FROM placements")).mappings().one()
    assert dict(stored) == written


def test_the_writer_refuses_a_connection_with_a_transaction(two_gpus):
    """Outside autocommit its INSERT would join a transaction nobody commits."""
    with two_gpus.connect() as conn:
        with pytest.raises(ValueError, match="needs an autocommit connection"):
            PlacementWriter(conn)


def committed_jobs(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.text("SELECT job_id FROM placements")))


def committed_within(engine, job: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while job not in committed_jobs(engine):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_decision_is_written_while_the_next_is_decided(two_gpus):
    """Group commit: job 1's write is on its way before job 2 is decided (nothing else is in
    flight), every write the cycle hears of has committed, and together they are every decision,
    in order, with the ids Postgres gave them."""
    kept = KeptPlacer(Config())
    requests = [Request(str(job), 20, user=1000) for job in (1, 2, 3)]
    with db.session_scope(two_gpus) as s:
        placer = kept.for_cycle(s, requests)
    first_landed_alone = []

    def deciding(outcomes):
        for outcome in outcomes:
            yield outcome
            if outcome.job_id == "1":  # asked for job 2: job 1 must be in flight already
                first_landed_alone.append(committed_within(two_gpus, 1))

    written, blocked = [], []
    with placement_writer(two_gpus) as writer:
        for rows in commit_as_decided(writer, deciding(placer.decide(requests)), requests, 8, blocked):
            assert {row["job_id"] for row in rows} <= committed_jobs(two_gpus)
            written += rows
    assert first_landed_alone == [True]
    assert [row["job_id"] for row in written] == [1, 2, 3] and blocked == []
    with two_gpus.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT job_id, id FROM placements")).all()) == \
            {row["job_id"]: row["id"] for row in written}


def test_a_refused_batch_ends_the_cycle_and_keeps_the_batches_before_it(two_gpus, caplog):
    """Another writer fills the GPU the placer used next: that write is refused without an error
    escaping (the daemon goes on), the write before it stays, the requests after it wait, and the
    next cycle's placer sees what the other writer did. With one decision at most waiting, each
    write is one job and job 3 is decided while job 2's write is in flight."""
    kept = KeptPlacer(Config())
    requests = [Request("1", 60, user=1000), Request("2", 60, user=1000), Request("3", 30, user=1000)]
    with db.session_scope(two_gpus) as s:
        placer = kept.for_cycle(s, requests)
    with placement_writer(two_gpus) as writer:
        batches = commit_as_decided(writer, placer.decide(requests), requests, 1, [])
        (first,) = next(batches)
        other = "GPU-1" if first["gpu_uuid"] == "GPU-0" else "GPU-0"
        place(two_gpus, 9, 70, uid=2000, gpu=other)
        assert list(batches) == []  # job 2's write was refused, job 3's was never sent
    assert "the capacity guard refused jobs [2]; they wait for the next cycle" in caplog.text
    assert committed_jobs(two_gpus) == {1, 9}
    _, result, ids = cycle(two_gpus, kept, requests[1:])
    assert [b.job_id for b in result.blocked] == ["2"] and set(ids) == {3}
    assert result.decisions[0].gpu_uuids == (first["gpu_uuid"],)


def test_a_written_placement_names_its_job_by_id_and_submit_time(two_gpus):
    requests = [Request("71", 30, user=5), Request("72", 30, user=5)]
    placer = KeptPlacer(Config(heartbeat_timeout=3600))
    with db.session_scope(two_gpus) as s:
        decide = placer.for_cycle(s, requests).decide(requests)
    with placement_writer(two_gpus) as writer:
        list(commit_as_decided(writer, decide, requests, 8, [], {71: 1_796_000_001, 72: 1_796_000_002}))
    with two_gpus.connect() as conn:
        keys = dict(conn.execute(sa.text("SELECT job_id, job_submit_time FROM placements")).all())
    assert keys == {71: 1_796_000_001, 72: 1_796_000_002}
