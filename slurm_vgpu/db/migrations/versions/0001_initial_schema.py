"""schema: nodes, gpus, placements, events; the capacity guard; least-privilege roles

The guard is a trigger, not application code: every writer of placements (placement daemon, CLI,
agent, a person with psql) goes through it, so a GPU can never be committed past 100% of its share or
its memory, nor hold two Unix users' slices unless the GPU is marked multi_user.

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('events',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('job_id', sa.BigInteger(), nullable=True),
    sa.Column('gpu_uuid', sa.Text(), nullable=True),
    sa.Column('node', sa.Text(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_index(op.f('ix_events_at'), 'events', ['at'], unique=False)
    op.create_index(op.f('ix_events_job_id'), 'events', ['job_id'], unique=False)
    op.create_table('nodes',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('agent_version', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_nodes'))
    )
    op.create_table('gpus',
    sa.Column('uuid', sa.Text(), nullable=False),
    sa.Column('node', sa.Text(), nullable=False),
    sa.Column('index', sa.SmallInteger(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('gres_type', sa.Text(), nullable=False),
    sa.Column('sm_count', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('compute_capability', sa.Text(), nullable=False),
    sa.Column('speed', sa.Float(), server_default='1.0', nullable=False),
    sa.Column('state', sa.Text(), server_default='up', nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('multi_user', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('placement_epoch', sa.BigInteger(), server_default='0', nullable=False),
    sa.CheckConstraint("state IN ('up', 'draining', 'down')", name=op.f('ck_gpus_state')),
    sa.CheckConstraint('speed > 0', name=op.f('ck_gpus_speed')),
    sa.ForeignKeyConstraint(['node'], ['nodes.name'], name=op.f('fk_gpus_node_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('uuid', name=op.f('pk_gpus')),
    sa.UniqueConstraint('node', 'index', name='node_index')
    )
    op.create_table('placements',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('job_id', sa.BigInteger(), nullable=False),
    sa.Column('gpu_uuid', sa.Text(), nullable=False),
    sa.Column('uid', sa.Integer(), nullable=False),
    sa.Column('share', sa.SmallInteger(), nullable=False),
    sa.Column('requested_share', sa.SmallInteger(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=True),
    sa.Column('slo_class', sa.Text(), nullable=False),
    sa.Column('state', sa.Text(), server_default='placed', nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('placed_at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.Column('pinned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("slo_class IN ('latency', 'throughput', 'best-effort')", name=op.f('ck_placements_slo_class')),
    sa.CheckConstraint("state IN ('placed', 'pinned', 'running', 'released', 'failed')", name=op.f('ck_placements_state')),
    sa.CheckConstraint('memory_mib IS NULL OR memory_mib > 0', name=op.f('ck_placements_memory')),
    sa.CheckConstraint('share BETWEEN 1 AND 100', name=op.f('ck_placements_share')),
    sa.ForeignKeyConstraint(['gpu_uuid'], ['gpus.uuid'], name=op.f('fk_placements_gpu_uuid_gpus')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_placements'))
    )
    op.create_index('ix_placements_active_gpu', 'placements', ['gpu_uuid'], unique=False, postgresql_where=sa.text("state IN ('placed', 'pinned', 'running')"))
    op.create_index('uq_placements_active_job', 'placements', ['job_id'], unique=True, postgresql_where=sa.text("state IN ('placed', 'pinned', 'running')"))
    op.execute(GUARD)
    op.execute(GUARD_TRIGGER)
    op.execute(ROLES)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS placements_guard ON placements")
    op.execute("DROP FUNCTION IF EXISTS placements_guard()")
    op.execute(REVOKE)
    op.drop_index('uq_placements_active_job', table_name='placements', postgresql_where=sa.text("state IN ('placed', 'pinned', 'running')"))
    op.drop_index('ix_placements_active_gpu', table_name='placements', postgresql_where=sa.text("state IN ('placed', 'pinned', 'running')"))
    op.drop_table('placements')
    op.drop_table('gpus')
    op.drop_table('nodes')
    op.drop_index(op.f('ix_events_job_id'), table_name='events')
    op.drop_index(op.f('ix_events_at'), table_name='events')
    op.drop_table('events')


ACTIVE = "('placed', 'pinned', 'running')"

GUARD = f"""
CREATE FUNCTION placements_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    gpu gpus%ROWTYPE;
    total_share integer;
    total_memory bigint;
    other_uid integer;
BEGIN
    IF NEW.state NOT IN {ACTIVE} THEN
        RETURN NEW;
    END IF;
    -- Updating the GPU row (not just locking it) makes concurrent writers of one GPU wait for each
    -- other under READ COMMITTED and fail with a serialization error under REPEATABLE READ.
    UPDATE gpus SET placement_epoch = placement_epoch + 1 WHERE uuid = NEW.gpu_uuid RETURNING * INTO gpu;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'GPU % is not in the inventory', NEW.gpu_uuid USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF gpu.state <> 'up' AND (TG_OP = 'INSERT' OR OLD.state NOT IN {ACTIVE} OR OLD.gpu_uuid <> NEW.gpu_uuid) THEN
        RAISE EXCEPTION 'GPU % is %: it takes no new slices', NEW.gpu_uuid, gpu.state
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(share), 0), coalesce(sum(memory_mib), 0) INTO total_share, total_memory
      FROM placements WHERE gpu_uuid = NEW.gpu_uuid AND state IN {ACTIVE} AND id <> NEW.id;
    IF total_share + NEW.share > 100 THEN
        RAISE EXCEPTION 'GPU % has % of 100 vgpu units placed; % more does not fit',
            NEW.gpu_uuid, total_share, NEW.share USING ERRCODE = 'check_violation';
    END IF;
    IF total_memory + coalesce(NEW.memory_mib, 0) > gpu.memory_mib THEN
        RAISE EXCEPTION 'GPU % has % of % MiB placed; % MiB more does not fit',
            NEW.gpu_uuid, total_memory, gpu.memory_mib, NEW.memory_mib USING ERRCODE = 'check_violation';
    END IF;
    IF NOT gpu.multi_user THEN
        SELECT uid INTO other_uid FROM placements
         WHERE gpu_uuid = NEW.gpu_uuid AND state IN {ACTIVE} AND id <> NEW.id AND uid <> NEW.uid LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'GPU % runs the MPS server of uid %; uid % cannot share it',
                NEW.gpu_uuid, other_uid, NEW.uid USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION placements_guard() FROM PUBLIC;
"""
GUARD_TRIGGER = ("CREATE TRIGGER placements_guard BEFORE INSERT OR UPDATE ON placements "
                 "FOR EACH ROW EXECUTE FUNCTION placements_guard()")

# Group roles (NOLOGIN): sites grant them to the login users of each component.
ROLES = """
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['slurm_vgpu_reader', 'slurm_vgpu_placement', 'slurm_vgpu_agent', 'slurm_vgpu_node']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;
GRANT SELECT ON nodes, gpus, placements, events TO slurm_vgpu_reader,
    slurm_vgpu_placement, slurm_vgpu_agent, slurm_vgpu_node;
GRANT INSERT ON events TO slurm_vgpu_placement, slurm_vgpu_agent, slurm_vgpu_node;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO slurm_vgpu_placement, slurm_vgpu_agent, slurm_vgpu_node;
-- placement daemon: creates and ends placements, drains GPUs (admin CLI runs as it too).
GRANT INSERT, UPDATE (state, reason, pinned_at, started_at, ended_at) ON placements TO slurm_vgpu_placement;
GRANT UPDATE (state, state_reason) ON gpus TO slurm_vgpu_placement;
-- node agent: registers inventory and heartbeats; drains a faulty GPU and fails its slices.
GRANT INSERT, UPDATE ON nodes TO slurm_vgpu_agent;
GRANT INSERT (uuid, node, index, name, model, gres_type, sm_count, memory_mib, compute_capability, speed)
    ON gpus TO slurm_vgpu_agent;
GRANT UPDATE (node, index, name, model, gres_type, sm_count, memory_mib, compute_capability, speed, state,
    state_reason) ON gpus TO slurm_vgpu_agent;
GRANT UPDATE (state, reason, ended_at) ON placements TO slurm_vgpu_agent;
-- prolog/epilog: mark the job's own placement running or released.
GRANT UPDATE (state, reason, started_at, ended_at) ON placements TO slurm_vgpu_node;
"""

REVOKE = """
REVOKE ALL ON nodes, gpus, placements, events FROM slurm_vgpu_reader, slurm_vgpu_placement,
    slurm_vgpu_agent, slurm_vgpu_node;
REVOKE USAGE ON ALL SEQUENCES IN SCHEMA public FROM slurm_vgpu_placement, slurm_vgpu_agent, slurm_vgpu_node;
"""
