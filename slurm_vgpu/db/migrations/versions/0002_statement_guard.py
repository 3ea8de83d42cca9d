"""the capacity guard checks a whole statement at once

0001's guard ran once per row: a cycle's multi-row INSERT of 20 placements paid 20 times for
locking a GPU and summing its slices (2.6 ms of a 3.5 ms insert on the bench). This guard runs once
per statement over its transition table: it locks every GPU the statement touches in uuid order,
then checks them in one query. The rules are the same: no GPU past 100 units or its
memory, no two Unix users on a GPU unless it is multi_user, no new slice on a GPU that is not up;
a GPU that does not exist is the foreign key's to refuse.

Revision ID: 0002
Revises: 0001
"""
from alembic import context, op
from alembic.script import ScriptDirectory

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

ACTIVE = "('placed', 'pinned', 'running')"

GUARD = f"""
CREATE FUNCTION placements_guard_statement() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    touched text[];  -- GPUs the statement leaves an active slice on, in uuid order
    arrived bigint[];  -- the statement's slices that are new on their GPU (inserted, revived or moved)
    bad record;
    held integer;
BEGIN
    SELECT array_agg(DISTINCT gpu_uuid ORDER BY gpu_uuid) INTO touched FROM new_rows WHERE state IN {ACTIVE};
    IF touched IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(id) INTO arrived FROM new_rows WHERE state IN {ACTIVE};
    ELSE
        SELECT array_agg(n.id) INTO arrived FROM new_rows n JOIN old_rows o USING (id)
         WHERE n.state IN {ACTIVE} AND (o.state NOT IN {ACTIVE} OR o.gpu_uuid <> n.gpu_uuid);
    END IF;
    -- One writer per GPU at a time. Locking in uuid order keeps two writers of the same GPUs from
    -- deadlocking; NO KEY UPDATE does not conflict with the foreign key's KEY SHARE locks. Bumping
    -- the epoch (not just locking) makes writers under REPEATABLE READ or SERIALIZABLE fail with a
    -- serialization error; under READ COMMITTED the query below sees what the other committed.
    UPDATE gpus SET placement_epoch = placement_epoch + 1
     WHERE uuid IN (SELECT uuid FROM gpus WHERE uuid = ANY (touched) ORDER BY uuid FOR NO KEY UPDATE);
    SELECT p.gpu_uuid AS uuid, g.state, g.memory_mib AS capacity, g.multi_user,
           bool_or(p.id = ANY (arrived)) AS arrival,
           sum(p.share) AS share, sum(coalesce(p.memory_mib, 0)) AS memory,
           coalesce(sum(p.share) FILTER (WHERE p.id = ANY (arrived)), 0) AS more_share,
           coalesce(sum(coalesce(p.memory_mib, 0)) FILTER (WHERE p.id = ANY (arrived)), 0) AS more_memory,
           min(p.uid) FILTER (WHERE NOT p.id = ANY (arrived)) AS held_uid,
           min(p.uid) AS low_uid, max(p.uid) AS high_uid
      INTO bad
      FROM placements p JOIN gpus g ON g.uuid = p.gpu_uuid
     WHERE p.gpu_uuid = ANY (touched) AND p.state IN {ACTIVE}
     GROUP BY p.gpu_uuid, g.state, g.memory_mib, g.multi_user
    HAVING (g.state <> 'up' AND bool_or(p.id = ANY (arrived)))
        OR sum(p.share) > 100 OR sum(coalesce(p.memory_mib, 0)) > g.memory_mib
        OR (NOT g.multi_user AND min(p.uid) <> max(p.uid))
     ORDER BY p.gpu_uuid LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF bad.state <> 'up' AND bad.arrival THEN
        RAISE EXCEPTION 'GPU % is %: it takes no new slices', bad.uuid, bad.state USING ERRCODE = 'check_violation';
    END IF;
    IF bad.share > 100 THEN
        RAISE EXCEPTION 'GPU % has % of 100 vgpu units placed; % more does not fit',
            bad.uuid, bad.share - bad.more_share, bad.more_share USING ERRCODE = 'check_violation';
    END IF;
    IF bad.memory > bad.capacity THEN
        RAISE EXCEPTION 'GPU % has % of % MiB placed; % MiB more does not fit',
            bad.uuid, bad.memory - bad.more_memory, bad.capacity, bad.more_memory USING ERRCODE = 'check_violation';
    END IF;
    held := coalesce(bad.held_uid, bad.low_uid);
    RAISE EXCEPTION 'GPU % runs the MPS server of uid %; uid % cannot share it',
        bad.uuid, held, CASE WHEN bad.high_uid <> held THEN bad.high_uid ELSE bad.low_uid END
        USING ERRCODE = 'check_violation';
END
$$;
REVOKE ALL ON FUNCTION placements_guard_statement() FROM PUBLIC;
CREATE TRIGGER placements_guard_insert AFTER INSERT ON placements
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION placements_guard_statement();
CREATE TRIGGER placements_guard_update AFTER UPDATE ON placements
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION placements_guard_statement();
"""


def _initial():
    """0001's module, for its row guard (a downgrade puts it back)."""
    return ScriptDirectory.from_config(context.config).get_revision("0001").module


def upgrade() -> None:
    op.execute("DROP TRIGGER placements_guard ON placements")
    op.execute("DROP FUNCTION placements_guard()")
    op.execute(GUARD)


def downgrade() -> None:
    op.execute("DROP TRIGGER placements_guard_update ON placements")
    op.execute("DROP TRIGGER placements_guard_insert ON placements")
    op.execute("DROP FUNCTION placements_guard_statement()")
    initial = _initial()
    op.execute(initial.GUARD)
    op.execute(initial.GUARD_TRIGGER)
