"""placements keep how many whole GPUs their job asked for

The typical requests the placer weighs come from recent placements, one row per GPU: a job of N
whole GPUs placed twice (its first pin refused, say) read as one job of 2N. Each row now says how
many GPUs its job holds (1 for a slice). Older rows of whole GPUs take the number of rows their
job has, which is what was read before.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('placements', sa.Column('gpus', sa.SmallInteger(), server_default='1', nullable=False))
    op.create_check_constraint(op.f('ck_placements_gpus'), 'placements', 'gpus >= 1')
    op.execute("""
        UPDATE placements p SET gpus = c.n
        FROM (SELECT job_id, job_submit_time, count(*) AS n FROM placements WHERE whole
              GROUP BY job_id, job_submit_time) c
        WHERE p.whole AND p.job_id = c.job_id AND p.job_submit_time = c.job_submit_time
    """)


def downgrade() -> None:
    op.drop_constraint(op.f('ck_placements_gpus'), 'placements', type_='check')
    op.drop_column('placements', 'gpus')
