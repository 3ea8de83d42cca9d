"""the capacity guard, whole: its function and triggers in one place; GPU updates and uncapped slices checked

The live guard was 0002's text patched by 0003; this revision states it whole (the function and
every trigger that runs it), so that the guard a database runs can be read here. What it adds:

- A GPU row changed under its slices is checked as a placements write is: memory that shrinks below
  the slices' caps, or ``multi_user`` turned off while two users' slices are on it, is refused (the
  agent's role may update every inventory column of a GPU).
- A slice without a memory cap may use all of its GPU's memory, so no slice arrives on a GPU where
  it would put an uncapped slice beside another user's capped one: that cap could not be kept. One
  user's uncapped and capped slices share that user's MPS server, and may share a GPU. The placement
  policy has the same rule (``GpuState.caps_kept``). Slices placed before this revision are left
  to end as they are.

A placement moved back from released or failed to an active state stays what 0002 made it: a new
arrival on its GPU, held to every rule a new slice is.

Revision ID: 0005
Revises: 0004
"""
from alembic import context, op
from alembic.script import ScriptDirectory

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

GUARD = """
CREATE OR REPLACE FUNCTION placements_guard_statement() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    touched text[];  -- the GPUs to check, in uuid order
    arrived bigint[] := '{}';  -- the statement's slices that are new on their GPU (inserted, revived or moved)
    bad record;
    held integer;
    pair record;
BEGIN
    IF TG_TABLE_NAME = 'gpus' THEN
        -- A GPU changed under its slices: only less memory, or the end of multi_user, can break a rule.
        SELECT array_agg(n.uuid ORDER BY n.uuid) INTO touched FROM new_rows n JOIN old_rows o USING (uuid)
         WHERE n.memory_mib < o.memory_mib OR (o.multi_user AND NOT n.multi_user);
    ELSE
        SELECT array_agg(DISTINCT gpu_uuid ORDER BY gpu_uuid) INTO touched
          FROM new_rows WHERE state IN ('placed', 'pinned', 'running');
        IF TG_OP = 'INSERT' THEN
            SELECT coalesce(array_agg(id), '{}') INTO arrived FROM new_rows WHERE state IN ('placed', 'pinned', 'running');
        ELSE
            -- a slice made active again (released or failed before) or moved is new on its GPU
            SELECT coalesce(array_agg(n.id), '{}') INTO arrived FROM new_rows n JOIN old_rows o USING (id)
             WHERE n.state IN ('placed', 'pinned', 'running')
               AND (o.state NOT IN ('placed', 'pinned', 'running') OR o.gpu_uuid <> n.gpu_uuid);
        END IF;
    END IF;
    IF touched IS NULL THEN
        RETURN NULL;
    END IF;
    -- The check below must see every slice committed before this writer got its locks: under READ
    -- COMMITTED each of its queries takes a fresh snapshot; under the higher levels it would not.
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION '% are written under READ COMMITTED, not %',
            TG_TABLE_NAME, current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'SET TRANSACTION ISOLATION LEVEL READ COMMITTED before writing ' || TG_TABLE_NAME;
    END IF;
    -- One writer per GPU at a time. Locking in uuid order keeps two writers of the same GPUs from
    -- deadlocking; NO KEY UPDATE does not conflict with the foreign key's KEY SHARE locks. A GPU
    -- update holds its rows' locks already.
    PERFORM 1 FROM gpus WHERE uuid = ANY (touched) ORDER BY uuid FOR NO KEY UPDATE;
    SELECT p.gpu_uuid AS uuid, g.state, g.memory_mib AS capacity, g.multi_user,
           bool_or(p.id = ANY (arrived)) AS arrival,
           sum(p.share) AS share, coalesce(sum(p.memory_mib), 0) AS memory,
           coalesce(sum(p.share) FILTER (WHERE p.id = ANY (arrived)), 0) AS more_share,
           coalesce(sum(p.memory_mib) FILTER (WHERE p.id = ANY (arrived)), 0) AS more_memory,
           min(p.uid) FILTER (WHERE NOT p.id = ANY (arrived)) AS held_uid,
           min(p.uid) AS low_uid, max(p.uid) AS high_uid
      INTO bad
      FROM placements p JOIN gpus g ON g.uuid = p.gpu_uuid
     WHERE p.gpu_uuid = ANY (touched) AND p.state IN ('placed', 'pinned', 'running')
     GROUP BY p.gpu_uuid, g.state, g.memory_mib, g.multi_user
    HAVING (g.state <> 'up' AND bool_or(p.id = ANY (arrived)))
        OR sum(p.share) > 100 OR coalesce(sum(p.memory_mib), 0) > g.memory_mib
        OR (NOT g.multi_user AND min(p.uid) <> max(p.uid))
        -- a slice without a cap may use all the memory: another user's capped slice beside it would
        -- not get its cap (checked for arrivals, as slices placed before this rule end as they are)
        OR (bool_or(p.id = ANY (arrived)) AND bool_or(p.memory_mib IS NULL) AND bool_or(p.memory_mib IS NOT NULL)
            AND min(p.uid) <> max(p.uid))
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
    IF bad.memory > bad.capacity AND TG_TABLE_NAME = 'gpus' THEN
        RAISE EXCEPTION 'GPU % has % MiB of slices placed; its memory cannot shrink to % MiB',
            bad.uuid, bad.memory, bad.capacity USING ERRCODE = 'check_violation',
            HINT = 'drain the GPU (slurm-vgpu drain) and change it once its slices have ended';
    END IF;
    IF bad.memory > bad.capacity THEN
        RAISE EXCEPTION 'GPU % has % of % MiB placed; % MiB more does not fit',
            bad.uuid, bad.memory - bad.more_memory, bad.capacity, bad.more_memory USING ERRCODE = 'check_violation';
    END IF;
    IF NOT bad.multi_user AND bad.low_uid <> bad.high_uid AND TG_TABLE_NAME = 'gpus' THEN
        RAISE EXCEPTION 'GPU % holds slices of uids % and %; it cannot stop being multi_user under them',
            bad.uuid, bad.low_uid, bad.high_uid USING ERRCODE = 'check_violation',
            HINT = 'drain the GPU (slurm-vgpu drain) and change it once its slices have ended';
    END IF;
    IF NOT bad.multi_user AND bad.low_uid <> bad.high_uid THEN
        held := coalesce(bad.held_uid, bad.low_uid);
        RAISE EXCEPTION 'GPU % runs the MPS server of uid %; uid % cannot share it',
            bad.uuid, held, CASE WHEN bad.high_uid <> held THEN bad.high_uid ELSE bad.low_uid END
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT u.uid AS uncapped, c.uid AS capped INTO pair
      FROM placements u JOIN placements c ON c.gpu_uuid = u.gpu_uuid AND c.uid <> u.uid
     WHERE u.gpu_uuid = bad.uuid AND u.state IN ('placed', 'pinned', 'running') AND u.memory_mib IS NULL
       AND c.state IN ('placed', 'pinned', 'running') AND c.memory_mib IS NOT NULL
     ORDER BY u.id = ANY (arrived) DESC, c.id = ANY (arrived) DESC LIMIT 1;
    RAISE EXCEPTION 'GPU % would hold a slice of uid % without a memory cap, which may use all % MiB, beside a capped slice of uid %',
        bad.uuid, pair.uncapped, bad.capacity, pair.capped USING ERRCODE = 'check_violation',
              HINT = 'slices of several users on one GPU each need a memory cap: submit with --vgpu-mem=SIZE';
END
$$;
REVOKE ALL ON FUNCTION placements_guard_statement() FROM PUBLIC;
DROP TRIGGER placements_guard_insert ON placements;
DROP TRIGGER placements_guard_update ON placements;
CREATE TRIGGER placements_guard_insert AFTER INSERT ON placements
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION placements_guard_statement();
CREATE TRIGGER placements_guard_update AFTER UPDATE ON placements
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION placements_guard_statement();
CREATE TRIGGER gpus_guard_update AFTER UPDATE ON gpus
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION placements_guard_statement();
"""


def upgrade() -> None:
    op.execute(GUARD)


def downgrade() -> None:
    """0004's guard is the one 0003 made of 0002's: 0003 undone and done again puts it back."""
    op.execute("DROP TRIGGER gpus_guard_update ON gpus")
    locks = ScriptDirectory.from_config(context.config).get_revision("0003").module
    locks.downgrade()
    locks.upgrade()
