"""the capacity guard, whole, with the MPS client limit: a GPU holds at most ``max_clients`` active slices

An MPS server takes at most 48 client CUDA contexts per GPU from compute capability 7.0 (Volta), 16
before; a client past that fails to start its CUDA context. ``gpus.max_clients`` is that limit, or
the site's lower ``MpsMaxClients``, written by the node agent when it registers its GPUs; this
revision fills it for the GPUs already registered from their compute capability (the site's key
applies from the agent's next start). An agent older than the column registers a new GPU at 16,
the least any MPS server takes.

The guard gains one rule, for the GPUs a statement brings slices to (inserted, revived or moved):
their active slices may not outnumber ``max_clients``, each slice being one client. A limit lowered
under more slices than that is not refused: those slices end as they are, and no new one arrives
until they are fewer. Every other rule is 0005's. As 0005 did, this revision states the live guard
whole (the function and every trigger that runs it), so that it can be read here.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import context, op
from alembic.script import ScriptDirectory

from slurm_vgpu.catalog import MPS_CLIENTS_BEFORE_VOLTA, mps_clients

revision = '0007'
down_revision = '0006'
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
           min(p.uid) AS low_uid, max(p.uid) AS high_uid, g.max_clients,
           count(*) AS slices, count(*) FILTER (WHERE p.id = ANY (arrived)) AS more_slices
      INTO bad
      FROM placements p JOIN gpus g ON g.uuid = p.gpu_uuid
     WHERE p.gpu_uuid = ANY (touched) AND p.state IN ('placed', 'pinned', 'running')
     GROUP BY p.gpu_uuid, g.state, g.memory_mib, g.multi_user, g.max_clients
    HAVING (g.state <> 'up' AND bool_or(p.id = ANY (arrived)))
        OR sum(p.share) > 100 OR coalesce(sum(p.memory_mib), 0) > g.memory_mib
        OR (NOT g.multi_user AND min(p.uid) <> max(p.uid))
        -- a slice without a cap may use all the memory: another user's capped slice beside it would
        -- not get its cap (checked for arrivals, as slices placed before this rule end as they are)
        OR (bool_or(p.id = ANY (arrived)) AND bool_or(p.memory_mib IS NULL) AND bool_or(p.memory_mib IS NOT NULL)
            AND min(p.uid) <> max(p.uid))
        -- one MPS client a slice: more than the GPU's server takes would fail to start
        OR (bool_or(p.id = ANY (arrived)) AND count(*) > g.max_clients)
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
    IF bad.arrival AND bad.slices > bad.max_clients THEN
        RAISE EXCEPTION 'GPU % has % slices placed, and its MPS server takes at most % clients; % more does not fit',
            bad.uuid, bad.slices - bad.more_slices, bad.max_clients, bad.more_slices
            USING ERRCODE = 'check_violation';
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
DROP TRIGGER gpus_guard_update ON gpus;
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
    op.add_column('gpus', sa.Column('max_clients', sa.SmallInteger(), server_default=str(MPS_CLIENTS_BEFORE_VOLTA),
                                    nullable=False))
    op.create_check_constraint(op.f('ck_gpus_max_clients'), 'gpus', 'max_clients > 0')
    bind = op.get_bind()
    for (capability,) in bind.execute(sa.text("SELECT DISTINCT compute_capability FROM gpus")).all():
        bind.execute(sa.text("UPDATE gpus SET max_clients = :most WHERE compute_capability = :capability"),
                     {"most": mps_clients(capability), "capability": capability})
    op.execute("GRANT INSERT (max_clients), UPDATE (max_clients) ON gpus TO slurm_vgpu_agent")
    op.execute(GUARD)


def downgrade() -> None:
    """0005's function again (its triggers are these), then the column goes."""
    whole = ScriptDirectory.from_config(context.config).get_revision("0005").module
    op.execute(whole.GUARD.split("REVOKE ALL", 1)[0])
    op.drop_column('gpus', 'max_clients')
