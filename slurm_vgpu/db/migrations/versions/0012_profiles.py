"""profiles: measured performance curves

One row per measured point of a named workload: its throughput and latency (p50, p99) on a GPU
model at an SM share and batch size (``slurm-vgpu profile`` writes them, ``slurm-vgpu profiles``
lists them). Every role reads them; only members of the new NOLOGIN group ``slurm_vgpu_profiler``
(the admins who measure) write them.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

GRANTS = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'slurm_vgpu_profiler') THEN
        CREATE ROLE slurm_vgpu_profiler NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON profiles TO slurm_vgpu_reader, slurm_vgpu_placement, slurm_vgpu_agent, slurm_vgpu_node;
GRANT SELECT, INSERT, DELETE ON profiles TO slurm_vgpu_profiler;
"""


def upgrade() -> None:
    op.create_table(
        'profiles',
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('name', sa.Text(), nullable=False),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('share', sa.SmallInteger(), nullable=False),
        sa.Column('batch', sa.Integer(), server_default='1', nullable=False),
        sa.Column('throughput', sa.Float(), nullable=False),
        sa.Column('p50_ms', sa.Float(), nullable=False),
        sa.Column('p99_ms', sa.Float(), nullable=False),
        sa.Column('job_id', sa.BigInteger(), nullable=True),
        sa.Column('measured_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint('share BETWEEN 1 AND 100', name=op.f('ck_profiles_share')),
        sa.CheckConstraint('batch >= 1', name=op.f('ck_profiles_batch')),
        sa.CheckConstraint('throughput >= 0', name=op.f('ck_profiles_throughput')),
        sa.CheckConstraint('p50_ms > 0 AND p99_ms >= p50_ms', name=op.f('ck_profiles_latency')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_profiles')),
        sa.UniqueConstraint('name', 'model', 'share', 'batch', name='point'),
    )
    op.execute(GRANTS)


def downgrade() -> None:
    op.drop_table('profiles')
