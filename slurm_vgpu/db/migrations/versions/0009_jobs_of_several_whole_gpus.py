"""jobs of several whole GPUs

A job of N whole GPUs (``--gres=gpu:N``) holds one placement per GPU, all on one node. A job's
active placements were unique by job id; now a slice job still has at most one active placement,
and a whole-GPU job at most one per GPU.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('placed', 'pinned', 'running')")
ACTIVE_SLICE = sa.text("state IN ('placed', 'pinned', 'running') AND NOT whole")


def upgrade() -> None:
    op.drop_index('uq_placements_active_job', table_name='placements', postgresql_where=ACTIVE)
    op.create_index('uq_placements_active_slice', 'placements', ['job_id'], unique=True,
                    postgresql_where=ACTIVE_SLICE)
    op.create_index('uq_placements_active_job_gpu', 'placements', ['job_id', 'gpu_uuid'], unique=True,
                    postgresql_where=ACTIVE)


def downgrade() -> None:
    op.drop_index('uq_placements_active_job_gpu', table_name='placements', postgresql_where=ACTIVE)
    op.drop_index('uq_placements_active_slice', table_name='placements', postgresql_where=ACTIVE_SLICE)
    op.create_index('uq_placements_active_job', 'placements', ['job_id'], unique=True, postgresql_where=ACTIVE)
