"""placements name their job by id and submit time; GPUs carry their device minor

A job id alone does not name a job: a slurmctld that lost its state (killed before it saved it)
hands out ids it already gave, and two jobs then met in one placement. ``job_submit_time`` (Slurm's
submit time, epoch seconds; 0 for rows written before this revision) tells them apart.

``/dev/nvidia<N>`` is numbered by the driver's minor, which NVML reports apart from its index
(``nvmlDeviceGetMinorNumber``); device rules and gres.conf ``File=`` lines need the minor.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('placements', sa.Column('job_submit_time', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('gpus', sa.Column('minor', sa.SmallInteger(), nullable=True))
    op.execute('UPDATE gpus SET minor = "index"')
    op.alter_column('gpus', 'minor', nullable=False)
    op.execute("GRANT INSERT (minor), UPDATE (minor) ON gpus TO slurm_vgpu_agent")


def downgrade() -> None:
    op.drop_column('gpus', 'minor')
    op.drop_column('placements', 'job_submit_time')
