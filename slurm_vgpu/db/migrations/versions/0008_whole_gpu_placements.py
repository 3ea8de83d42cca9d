"""placements of whole GPUs

A job may ask for a whole GPU (``--gres=gpu:1``) instead of a slice. Its placement takes all of
the GPU's 100 units, so the capacity guard keeps slices off the GPU as for any full GPU, and
``whole`` tells the node to give the job the GPU natively (Slurm's gres/gpu and its device file,
no MPS server): the prolog starts no MPS daemon for it, the agent restarts none on its GPU. A
whole GPU comes with all of its memory: no memory cap.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('placements', sa.Column('whole', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_check_constraint(op.f('ck_placements_whole'), 'placements',
                               'NOT whole OR (share = 100 AND memory_mib IS NULL)')


def downgrade() -> None:
    op.drop_constraint(op.f('ck_placements_whole'), 'placements', type_='check')
    op.drop_column('placements', 'whole')
