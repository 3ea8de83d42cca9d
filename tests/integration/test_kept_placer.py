"""The placement daemon's kept placer against a real Postgres: it measures against the recent
placements, keeps its view between cycles (taking what others committed), and is rebuilt when its
workload is stale or was empty; its batch write goes through the capacity guard, and a cycle commits
its decisions batch by batch."""
from __future__ import annotations

import dataclasses
import gc

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from slurm_vgpu.config import Config
from slurm_vgpu.db import engine as db
from slurm_vgpu.db import store
from slurm_vgpu.placement.cycle import KeptPlacer, commit_in_batches, placement_rows
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
        ids = store.add_placements(s, placement_rows(result.decisions, requests))
    return placer, result, ids


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
    with pytest.raises(sa.exc.DBAPIError, match="0 of 100 vgpu units placed; 120 more does not fit"):
        with db.session_scope(two_gpus) as s:
            store.add_placements(s, rows)
    with two_gpus.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM placements")) == 0


def committed_jobs(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.text("SELECT job_id FROM placements")))


def test_each_batch_is_committed_before_the_next_is_decided(two_gpus):
    kept = KeptPlacer(Config())
    requests = [Request(str(job), 20, user=1000) for job in (1, 2, 3)]
    with db.session_scope(two_gpus) as s:
        placer = kept.for_cycle(s, requests)
    blocked = []
    with Session(two_gpus) as session:
        batches = commit_in_batches(session, placer.decide(requests), requests, 2, blocked)
        first = next(batches)
        assert [row["job_id"] for row in first] == [1, 2] and committed_jobs(two_gpus) == {1, 2}
        second = next(batches)
        assert [row["job_id"] for row in second] == [3] and committed_jobs(two_gpus) == {1, 2, 3}
        assert next(batches, None) is None and blocked == []
    with two_gpus.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT job_id, id FROM placements")).all()) == \
            {row["job_id"]: row["id"] for row in first + second}


def test_a_refused_batch_ends_the_cycle_and_keeps_the_batches_before_it(two_gpus):
    """Another writer fills the GPU the placer would use next: that batch is refused without an
    error escaping (the daemon goes on), the batch before it stays, the requests after it wait,
    and the next cycle's placer sees what the other writer did."""
    kept = KeptPlacer(Config())
    requests = [Request("1", 60, user=1000), Request("2", 60, user=1000), Request("3", 30, user=1000)]
    with db.session_scope(two_gpus) as s:
        placer = kept.for_cycle(s, requests)
    with Session(two_gpus) as session:
        batches = commit_in_batches(session, placer.decide(requests), requests, 1, [])
        (first,) = next(batches)
        other = "GPU-1" if first["gpu_uuid"] == "GPU-0" else "GPU-0"
        place(two_gpus, 9, 70, uid=2000, gpu=other)
        assert list(batches) == []  # job 2's batch was refused, job 3 was not decided
    assert committed_jobs(two_gpus) == {1, 9}
    _, result, ids = cycle(two_gpus, kept, requests[1:])
    assert [b.job_id for b in result.blocked] == ["2"] and set(ids) == {3}
    assert result.decisions[0].gpu_uuids == (first["gpu_uuid"],)
