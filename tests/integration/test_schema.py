"""The schema on a real Postgres: migrations are complete, and the database itself refuses to
oversubscribe a GPU or mix Unix users on one, however many writers race."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from slurm_vgpu.db import engine as db
from slurm_vgpu.db.models import Gpu, Node, Placement
from slurm_vgpu.node import store as node_store

from ..conftest import new_database


def test_migrations_match_models(database_url):
    db.check(database_url)  # raises when a model change has no migration


def test_downgrade_and_upgrade_round_trip():
    url = new_database()
    try:
        db.upgrade(url)
        from alembic import command

        command.downgrade(db.alembic_config(url), "base")
        db.upgrade(url)
        db.check(url)
    finally:
        db.drop_database(url)


def add_gpu(engine, uuid="GPU-1", memory_mib=40960, multi_user=False, state="up", compute_capability="8.0"):
    with db.session_scope(engine) as s:
        if s.get(Node, "node1") is None:
            s.add(Node(name="node1"))
            s.flush()
        s.add(Gpu(uuid=uuid, node="node1", index=int(uuid.rsplit("-", 1)[1]), name="NVIDIA A100", model="a100",
                  gres_type=f"a100_{uuid[-1]}", sm_count=108, memory_mib=memory_mib,
                  compute_capability=compute_capability,
                  multi_user=multi_user, state=state))


def place(engine, job_id, share, uid=1000, memory_mib=None, gpu="GPU-1", isolation=None):
    options = {"isolation_level": isolation} if isolation else {}
    with engine.connect().execution_options(**options) as conn:
        conn.execute(sa.insert(Placement).values(
            job_id=job_id, gpu_uuid=gpu, uid=uid, share=share, requested_share=share,
            memory_mib=memory_mib, slo_class="throughput", state="pinned"))
        conn.commit()


def node_role(engine, node: str) -> str:
    """A role of the agent and node group roles that acts for ``node`` only, as a GPU node's login
    does (migration 0006); created once per server, mapped in this database."""
    role = f"slurm_vgpu_test_{node}"
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role} NOLOGIN IN ROLE slurm_vgpu_agent, slurm_vgpu_node; END IF; END $$"))
        conn.execute(sa.text("INSERT INTO node_logins VALUES (:r, :n) ON CONFLICT (login) DO UPDATE SET node = :n"),
                     {"r": role, "n": node})
    return role


def together(work, args):
    """Run ``work(arg)`` for every arg in its own thread, all released at once."""
    barrier = threading.Barrier(len(args))

    def start(arg):
        barrier.wait()
        work(arg)

    threads = [threading.Thread(target=start, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def race(engine, attempts):
    """Start every insert at once; return the job ids that committed and, by job id, why the others
    did not."""
    won, refused, lock = [], {}, threading.Lock()

    def attempt(kwargs):
        try:
            place(engine, **kwargs)
            with lock:
                won.append(kwargs["job_id"])
        except sa.exc.DBAPIError as exc:
            with lock:
                refused[kwargs["job_id"]] = str(exc.orig)

    together(attempt, attempts)
    return won, refused


def test_concurrent_writers_never_pass_100_percent(clean_db):
    add_gpu(clean_db)
    won, refused = race(clean_db, [{"job_id": i, "share": 30} for i in range(10)])
    assert len(won) == 3
    assert all("more does not fit" in why for why in refused.values())
    with clean_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT sum(share) FROM placements WHERE state='pinned'")) == 90


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_writers_above_read_committed_are_refused_and_told_what_to_do(clean_db, isolation):
    """Their snapshot predates the guard's lock, so the guard could not see a slice committed just
    before it: racing alongside READ COMMITTED writers, they are all refused, and the others still
    stop at 100%."""
    add_gpu(clean_db)
    attempts = [{"job_id": i, "share": 30, "isolation": isolation if i % 2 else None} for i in range(10)]
    won, refused = race(clean_db, attempts)
    assert len(won) == 3 and all(job % 2 == 0 for job in won)
    for job in range(1, 10, 2):
        assert f"placements are written under READ COMMITTED, not {isolation.lower()}" in refused[job]
    with pytest.raises(sa.exc.InternalError) as refusal:
        place(clean_db, 99, 10, isolation=isolation)
    assert refusal.value.orig.diag.message_hint == \
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED before writing placements"
    with clean_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT sum(share) FROM placements")) == 90


def test_our_engines_write_under_read_committed_whatever_the_server_default():
    url = new_database()
    engines: list[sa.Engine] = []
    try:
        db.upgrade(url)
        admin = sa.create_engine(db.database_url(url), isolation_level="AUTOCOMMIT")
        plain, ours = sa.create_engine(db.database_url(url)), db.make_engine(url)
        engines += [admin, plain, ours]
        with admin.connect() as conn:
            conn.execute(sa.text(f"ALTER DATABASE \"{db.database_url(url).database}\" "
                                 "SET default_transaction_isolation = 'repeatable read'"))
        add_gpu(ours)
        with pytest.raises(sa.exc.InternalError, match="not repeatable read"):
            place(plain, 1, 30)  # the server's default is in force
        place(ours, 2, 30)
        with ours.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # the writer's
            assert conn.scalar(sa.text("SHOW transaction_isolation")) == "read committed"
        with node_store.connect(url) as conn:  # the prolog's
            node_store.mark_running(conn, node_store.active_placements(conn, 2)[0])
        with ours.connect() as conn:
            assert conn.scalar(sa.text("SELECT state FROM placements WHERE job_id = 2")) == "running"
    finally:
        for engine in engines:
            engine.dispose()
        db.drop_database(url)


def test_concurrent_users_never_share_a_gpu(clean_db):
    add_gpu(clean_db)
    won, _ = race(clean_db, [{"job_id": i, "share": 10, "uid": 1000 + i % 2} for i in range(8)])
    with clean_db.connect() as conn:
        uids = conn.scalars(sa.text("SELECT DISTINCT uid FROM placements WHERE state='pinned'")).all()
    assert len(uids) == 1 and len(won) == 4


def test_multi_user_gpu_takes_several_users(clean_db):
    add_gpu(clean_db, multi_user=True)
    place(clean_db, 1, 40, uid=1000)
    place(clean_db, 2, 40, uid=1001)
    with pytest.raises(sa.exc.IntegrityError, match="90 of 100|80 of 100"):
        place(clean_db, 3, 40, uid=1002)


def test_memory_cannot_be_overcommitted(clean_db):
    add_gpu(clean_db, memory_mib=16384)
    place(clean_db, 1, 10, memory_mib=12000)
    with pytest.raises(sa.exc.IntegrityError, match="MiB"):
        place(clean_db, 2, 10, memory_mib=8000)


def set_state(engine, job_id, state):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE placements SET state = :state WHERE job_id = :job"),
                     {"state": state, "job": job_id})


def test_released_slices_free_capacity_and_the_user(clean_db):
    add_gpu(clean_db)
    place(clean_db, 1, 100, uid=1000)
    set_state(clean_db, 1, "released")
    place(clean_db, 2, 100, uid=1001)


def test_drained_gpu_takes_no_new_slice(clean_db):
    add_gpu(clean_db, state="draining")
    with pytest.raises(sa.exc.IntegrityError, match="draining"):
        place(clean_db, 1, 10)


def test_a_slice_job_has_one_active_placement(clean_db):
    add_gpu(clean_db)
    add_gpu(clean_db, uuid="GPU-2")
    place(clean_db, 7, 10)
    with pytest.raises(sa.exc.IntegrityError, match="uq_placements_active_slice"):
        place(clean_db, 7, 10, gpu="GPU-2")


def place_whole(engine, job_id, gpu):
    with engine.begin() as conn:
        conn.execute(sa.insert(Placement).values(
            job_id=job_id, gpu_uuid=gpu, uid=1000, share=100, requested_share=100, whole=True,
            slo_class="throughput", state="pinned"))


def test_a_job_of_whole_gpus_has_one_active_placement_per_gpu(clean_db):
    """``--gres=gpu:2``: two placements, each all of its GPU, and never two of one job on one GPU."""
    for uuid in ("GPU-1", "GPU-2"):
        add_gpu(clean_db, uuid=uuid)
    place_whole(clean_db, 7, "GPU-1")
    place_whole(clean_db, 7, "GPU-2")
    set_state(clean_db, 7, "released")
    place_whole(clean_db, 7, "GPU-2")  # an ended placement holds nothing
    with pytest.raises(sa.exc.IntegrityError, match="uq_placements_active_job_gpu"):
        place_whole(clean_db, 7, "GPU-2")


def test_a_gpu_takes_no_more_slices_than_its_mps_server_takes_clients(clean_db):
    """An A100 (compute capability 8.0): 48 one-unit slices fill its MPS server though 52 units are
    free; the 49th is refused, in its own statement or in a batch, and a released slice makes room."""
    add_gpu(clean_db)
    place_batch(clean_db, [(job, "GPU-1", 1000, 1) for job in range(1, 48)])
    place(clean_db, 48, 1)
    with pytest.raises(sa.exc.IntegrityError, match="GPU GPU-1 has 48 slices placed, and its MPS server takes "
                                                    "at most 48 clients; 1 more does not fit"):
        place(clean_db, 49, 1)
    set_state(clean_db, 1, "released")
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 has 47 slices placed, .* at most 48 clients; 2 more"):
        place_batch(clean_db, [(49, "GPU-1", 1000, 1), (50, "GPU-1", 1000, 1)])
    place(clean_db, 49, 1)
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 has 48 slices placed"):
        set_state(clean_db, 1, "running")  # revived: a new arrival
    with clean_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM placements WHERE state IN ('placed', 'pinned')")) == 48


def test_racing_writers_never_pass_a_gpus_client_limit(clean_db):
    add_gpu(clean_db, uuid="GPU-1", compute_capability="6.0")  # before Volta: 16 clients
    place_batch(clean_db, [(job, "GPU-1", 1000, 1) for job in range(100, 113)])
    won, refused = race(clean_db, [{"job_id": i, "share": 1} for i in range(10)])
    assert len(won) == 3
    assert all("its MPS server takes at most 16 clients" in why for why in refused.values())


def test_a_limit_lowered_under_more_slices_is_kept_and_refuses_new_ones(clean_db):
    """The agent registers a lower MpsMaxClients: the slices on the GPU end as they are."""
    add_gpu(clean_db)
    place_batch(clean_db, [(job, "GPU-1", 1000, 1) for job in range(1, 6)])
    with db.session_scope(clean_db) as session:
        session.execute(sa.text(f"SET LOCAL ROLE {node_role(clean_db, 'node1')}"))
        session.execute(sa.text("UPDATE gpus SET max_clients = 3"))
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 has 5 slices placed, .* at most 3 clients"):
        place(clean_db, 6, 1)
    for job in (1, 2, 3):
        set_state(clean_db, job, "released")
    place(clean_db, 6, 1)


def test_registration_writes_each_gpus_client_limit_from_its_compute_capability_and_the_site(clean_db):
    from slurm_vgpu.adapters.gpus import GpuRecord
    from slurm_vgpu.db import store

    gpus = [GpuRecord(index=i, uuid=f"GPU-{cc}", name="NVIDIA GPU", model="gpu", sm_count=80, memory_mib=16384,
                      compute_capability=cc) for i, cc in enumerate(["6.0", "7.0", "9.0"])]

    def limits():
        with clean_db.connect() as conn:
            return dict(conn.execute(sa.text("SELECT compute_capability, max_clients FROM gpus")).all())

    with db.session_scope(clean_db) as session:
        session.execute(sa.text(f"SET LOCAL ROLE {node_role(clean_db, 'node7')}"))
        store.register_node(session, "node7", gpus, "test")
    assert limits() == {"6.0": 16, "7.0": 48, "9.0": 48}
    with db.session_scope(clean_db) as session:
        session.execute(sa.text(f"SET LOCAL ROLE {node_role(clean_db, 'node7')}"))
        store.register_node(session, "node7", gpus, "test", mps_max_clients=20)  # MpsMaxClients=20
    assert limits() == {"6.0": 16, "7.0": 20, "9.0": 20}
    with db.session_scope(clean_db) as session:
        assert {g.uuid: g.max_clients for g in store.gpu_states(session, 60)} == \
            {"GPU-6.0": 16, "GPU-7.0": 20, "GPU-9.0": 20}


def test_migration_0007_gives_registered_gpus_their_mps_servers_limit():
    from alembic import command

    url = new_database()
    try:
        command.upgrade(db.alembic_config(url), "0006")
        engine = db.make_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO nodes (name) VALUES ('old')"))
            for index, cc in enumerate(["6.1", "8.0"]):
                conn.execute(sa.text(
                    "INSERT INTO gpus (uuid, node, index, minor, name, model, gres_type, sm_count, memory_mib, "
                    "compute_capability) VALUES (:u, 'old', :i, :i, 'GPU', 'gpu', :t, 80, 16384, :cc)"),
                    {"u": f"GPU-{cc}", "i": index, "t": f"gpu_{index}", "cc": cc})
        db.upgrade(url)
        with engine.connect() as conn:
            assert dict(conn.execute(sa.text("SELECT compute_capability, max_clients FROM gpus")).all()) == \
                {"6.1": 16, "8.0": 48}
        engine.dispose()
    finally:
        db.drop_database(url)


def test_roles_are_least_privilege(clean_db):
    add_gpu(clean_db)
    with clean_db.connect() as conn:
        conn.execute(sa.text("SET ROLE slurm_vgpu_node"))
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("UPDATE gpus SET state = 'up'"))
        conn.rollback()
        conn.execute(sa.text("SET ROLE slurm_vgpu_reader"))
        assert conn.scalar(sa.text("SELECT count(*) FROM gpus")) == 1
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("DELETE FROM placements"))


def test_the_agent_role_registers_a_node_and_nothing_more(clean_db):
    from slurm_vgpu.adapters.gpus import GpuRecord
    from slurm_vgpu.db import store

    gpu = GpuRecord(index=0, uuid="GPU-a", name="NVIDIA A100-SXM4-40GB", model="a100", sm_count=108,
                    memory_mib=40960, compute_capability="8.0")
    with db.session_scope(clean_db) as session:
        session.execute(sa.text(f"SET LOCAL ROLE {node_role(clean_db, 'node7')}"))
        store.register_node(session, "node7", [gpu], "test")
        store.register_node(session, "node7", [gpu], "test")  # the upsert path: a restarted agent
    with clean_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT model FROM gpus WHERE uuid = 'GPU-a'")) == "a100"
        conn.execute(sa.text(f"SET ROLE {node_role(clean_db, 'node7')}"))
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text("UPDATE gpus SET multi_user = true"))


def place_batch(engine, rows):
    """Insert several slices in one statement, as the placement daemon writes a cycle."""
    with engine.begin() as conn:
        conn.execute(sa.insert(Placement).values([  # one multi-row VALUES statement, not executemany
            dict(job_id=job, gpu_uuid=gpu, uid=uid, share=share, requested_share=share, memory_mib=None,
                 slo_class="throughput", state="placed") for job, gpu, uid, share in rows]))


def active_shares(engine):
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT gpu_uuid, sum(share) FROM placements WHERE state = 'placed' GROUP BY gpu_uuid")).all())


def test_one_statement_cannot_overfill_a_gpu_with_its_own_rows(clean_db):
    add_gpu(clean_db)
    add_gpu(clean_db, uuid="GPU-2")
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 has 0 of 100 vgpu units placed; 120 more does not fit"):
        place_batch(clean_db, [(1, "GPU-2", 1000, 10), (2, "GPU-1", 1000, 60), (3, "GPU-1", 1000, 60)])
    assert active_shares(clean_db) == {}  # the whole statement is refused, GPU-2's slice too
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 runs the MPS server of uid 1000; uid 1001"):
        place_batch(clean_db, [(1, "GPU-1", 1000, 10), (2, "GPU-1", 1001, 10)])
    place_batch(clean_db, [(1, "GPU-1", 1000, 60), (2, "GPU-1", 1000, 40), (3, "GPU-2", 1001, 100)])
    assert active_shares(clean_db) == {"GPU-1": 100, "GPU-2": 100}


def test_batches_over_the_same_gpus_in_opposite_orders_neither_deadlock_nor_overfill(clean_db):
    for k in range(1, 5):
        add_gpu(clean_db, uuid=f"GPU-{k}")
    gpus = [f"GPU-{k}" for k in range(1, 5)]
    errors = []

    def writer(w):
        order = gpus if w % 2 else gpus[::-1]
        for round_ in range(10):
            try:
                place_batch(clean_db, [(w * 1000 + round_ * 10 + i, gpu, 1000, 15) for i, gpu in enumerate(order)])
            except sa.exc.DBAPIError as exc:  # collected: an assert in a thread would not fail the test
                if "more does not fit" not in str(exc.orig):
                    errors.append(exc.orig.sqlstate)

    together(writer, range(8))
    assert errors == []  # no deadlock (40P01) nor any other failure
    assert active_shares(clean_db) == {gpu: 90 for gpu in gpus}  # six batches of 15 fit, no more


def test_a_released_slice_comes_back_only_as_a_new_slice_that_fits(clean_db):
    add_gpu(clean_db)
    place(clean_db, 1, 60, uid=1000)
    set_state(clean_db, 1, "released")
    place(clean_db, 2, 50, uid=1000)
    with pytest.raises(sa.exc.IntegrityError, match="has 50 of 100 vgpu units placed; 60 more does not fit"):
        set_state(clean_db, 1, "placed")
    place(clean_db, 3, 50, uid=1000)
    set_state(clean_db, 2, "running")  # a slice that stays active may change state on a full GPU
    for job in (2, 3):
        set_state(clean_db, job, "failed")
    place(clean_db, 4, 30, uid=1001)
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 runs the MPS server of uid 1001; uid 1000 cannot share it"):
        set_state(clean_db, 1, "placed")
    set_state(clean_db, 4, "released")
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE gpus SET state = 'draining'"))
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 is draining: it takes no new slices"):
        set_state(clean_db, 1, "placed")
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE gpus SET state = 'up'"))
    set_state(clean_db, 1, "placed")  # it fits now: back it comes


def agent_update(engine, sql):
    """An UPDATE of the gpus table as node1's agent runs it."""
    role = node_role(engine, "node1")
    with engine.begin() as conn:
        conn.execute(sa.text(f"SET LOCAL ROLE {role}"))
        conn.execute(sa.text(sql))


def test_a_gpus_memory_cannot_shrink_below_its_slices_caps(clean_db):
    add_gpu(clean_db, memory_mib=40960)
    place(clean_db, 1, 30, memory_mib=20000)
    with pytest.raises(sa.exc.IntegrityError, match="GPU-1 has 20000 MiB of slices placed; its memory cannot "
                                                    "shrink to 16384 MiB") as refusal:
        agent_update(clean_db, "UPDATE gpus SET memory_mib = 16384")
    assert refusal.value.orig.diag.message_hint == \
        "drain the GPU (slurm-vgpu drain) and change it once its slices have ended"
    agent_update(clean_db, "UPDATE gpus SET memory_mib = 20000")  # still room for every cap
    set_state(clean_db, 1, "released")
    agent_update(clean_db, "UPDATE gpus SET memory_mib = 8192")


def test_an_agent_reporting_less_memory_than_placed_is_refused(clean_db):
    from slurm_vgpu.adapters.gpus import GpuRecord
    from slurm_vgpu.db import store

    def register(memory_mib):
        gpu = GpuRecord(index=0, uuid="GPU-a", name="NVIDIA A100-SXM4-40GB", model="a100", sm_count=108,
                        memory_mib=memory_mib, compute_capability="8.0")
        role = node_role(clean_db, "node7")
        with db.session_scope(clean_db) as session:
            session.execute(sa.text(f"SET LOCAL ROLE {role}"))
            store.register_node(session, "node7", [gpu], "test")

    register(40960)
    place(clean_db, 1, 30, memory_mib=30000, gpu="GPU-a")
    with pytest.raises(sa.exc.IntegrityError, match="its memory cannot shrink to 20480 MiB"):
        register(20480)
    with clean_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT memory_mib FROM gpus WHERE uuid = 'GPU-a'")) == 40960


def test_a_gpu_stays_multi_user_while_two_users_slices_are_on_it(clean_db):
    add_gpu(clean_db, multi_user=True)
    place(clean_db, 1, 30, uid=1000)
    place(clean_db, 2, 30, uid=1001)
    with pytest.raises(sa.exc.IntegrityError,
                       match="GPU-1 holds slices of uids 1000 and 1001; it cannot stop being multi_user"):
        with clean_db.begin() as conn:
            conn.execute(sa.text("UPDATE gpus SET multi_user = false"))
    set_state(clean_db, 2, "released")
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE gpus SET multi_user = false"))  # one user left: fine


def test_a_gpu_update_under_repeatable_read_is_refused_only_where_it_could_break_a_rule(clean_db):
    add_gpu(clean_db)
    place(clean_db, 1, 30, memory_mib=8000)
    with clean_db.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        conn.execute(sa.text("UPDATE gpus SET state_reason = 'noted'"))  # no rule at stake
        with pytest.raises(sa.exc.InternalError, match="gpus are written under READ COMMITTED, not repeatable read"):
            conn.execute(sa.text("UPDATE gpus SET memory_mib = 20000"))


def test_a_slice_without_a_memory_cap_never_shares_a_gpu_with_another_users_capped_slice(clean_db):
    """It may use all of the GPU's memory: the other user's cap could not be kept."""
    add_gpu(clean_db, multi_user=True)
    place(clean_db, 1, 10, uid=1000, memory_mib=8000)
    with pytest.raises(sa.exc.IntegrityError,
                       match="GPU-1 would hold a slice of uid 1001 without a memory cap, which may use all "
                             "40960 MiB, beside a capped slice of uid 1000") as refusal:
        place(clean_db, 2, 10, uid=1001)
    assert refusal.value.orig.diag.message_hint == \
        "slices of several users on one GPU each need a memory cap: submit with --vgpu-mem=SIZE"
    place(clean_db, 3, 10, uid=1000)  # its own user's: one MPS server
    with pytest.raises(sa.exc.IntegrityError, match="slice of uid 1000 without a memory cap, .* beside a "
                                                    "capped slice of uid 1001"):
        place(clean_db, 4, 10, uid=1001, memory_mib=8000)  # the other way round
    set_state(clean_db, 3, "released")
    place(clean_db, 4, 10, uid=1001, memory_mib=8000)
    with pytest.raises(sa.exc.IntegrityError, match="slice of uid 1000 without a memory cap, .* beside a "
                                                    "capped slice of uid 1001"):
        set_state(clean_db, 3, "running")  # revived: a new arrival


def test_slices_without_a_memory_cap_of_several_users_may_share_a_gpu(clean_db):
    """None of them was promised memory."""
    add_gpu(clean_db, multi_user=True)
    place(clean_db, 1, 10, uid=1000)
    place(clean_db, 2, 10, uid=1001)


def test_the_live_guard_is_the_one_migration_0007_states_whole(clean_db, database_url):
    """A reader finds the guard the database runs, function and triggers, in one file."""
    from alembic.script import ScriptDirectory

    stated = ScriptDirectory.from_config(db.alembic_config(database_url)).get_revision("0007").module.GUARD
    with clean_db.connect() as conn:
        source = conn.scalar(sa.text("SELECT prosrc FROM pg_proc WHERE proname = 'placements_guard_statement'"))
        triggers = conn.execute(sa.text(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE p.proname = 'placements_guard_statement' ORDER BY 1, 2")).all()
    assert stated.split("AS $$", 1)[1].split("$$;", 1)[0] == source
    assert triggers == [("gpus", "gpus_guard_update"), ("placements", "placements_guard_insert"),
                        ("placements", "placements_guard_update")]
    assert all(f"CREATE TRIGGER {name} AFTER" in stated for _, name in triggers)
