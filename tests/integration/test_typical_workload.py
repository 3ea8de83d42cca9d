"""The typical requests the placer weighs fragmentation and CPU stranding against are read back
from recent placements (real Postgres): one request per job, a job of several whole GPUs as one
request of that many, however many times it was placed."""
from __future__ import annotations

import sqlalchemy as sa

from slurm_vgpu.db import engine as db
from slurm_vgpu.db import store
from slurm_vgpu.db.models import Placement
from slurm_vgpu.placement.cycle import placement_rows
from slurm_vgpu.policy import Decision, Request, SloClass

from .test_schema import add_gpu


def write(engine, decision: Decision, request: Request) -> None:
    with db.session_scope(engine) as session:
        assert store.insert_placements(session, placement_rows([decision], {request.job_id: request}, {7: 100}))


def test_a_job_of_whole_gpus_placed_twice_reads_as_one_request_of_its_gpus(clean_db):
    for uuid in ("GPU-1", "GPU-2", "GPU-3"):
        add_gpu(clean_db, uuid=uuid)
    pair = Request(job_id="7", share=100, user=1000, slo_class=SloClass.THROUGHPUT, gpus=2, whole=True,
                   cpu_milli=4000)
    write(clean_db, Decision("7", "node1", ("GPU-1", "GPU-2"), 100), pair)
    with db.session_scope(clean_db) as session:  # Slurm refused the pin: placed again elsewhere
        for placement in session.scalars(sa.select(Placement).where(Placement.job_id == 7)):
            store.end_placement(session, placement, "failed", "pin refused")
    write(clean_db, Decision("7", "node1", ("GPU-2", "GPU-3"), 100), pair)
    slice_ = Request(job_id="8", share=30, user=1000, slo_class=SloClass.LATENCY)
    write(clean_db, Decision("8", "node1", ("GPU-1",), 30), slice_)
    with db.session_scope(clean_db) as session:
        typical = store.recent_requests(session, 100)
    assert [(r.job_id, r.gpus, r.whole, r.share, r.cpu_milli) for r in typical] == [
        ("8", 1, False, 30, 1000), ("7", 2, True, 100, 4000)]
