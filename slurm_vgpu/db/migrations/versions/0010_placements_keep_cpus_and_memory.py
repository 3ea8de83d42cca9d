"""placements keep the CPUs and node memory their jobs asked for

The placer measures how a node's CPUs strand its GPUs against the typical requests, which it reads
from recent placements: they now say how many CPUs (``-n`` x ``-c``) and how much node memory
(``--mem``; NULL: not asked for) each job asked for. Older rows take one CPU, Slurm's default.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('placements', sa.Column('cpus', sa.Integer(), server_default='1', nullable=False))
    op.add_column('placements', sa.Column('node_memory_mib', sa.Integer(), nullable=True))
    op.create_check_constraint(op.f('ck_placements_cpus'), 'placements', 'cpus >= 1')
    op.create_check_constraint(op.f('ck_placements_node_memory'), 'placements', 'node_memory_mib IS NULL OR node_memory_mib > 0')


def downgrade() -> None:
    op.drop_constraint(op.f('ck_placements_node_memory'), 'placements', type_='check')
    op.drop_constraint(op.f('ck_placements_cpus'), 'placements', type_='check')
    op.drop_column('placements', 'node_memory_mib')
    op.drop_column('placements', 'cpus')
