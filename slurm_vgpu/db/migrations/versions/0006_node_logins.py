"""each node's logins write only that node's rows

A GPU node's agent and prolog/epilog held the ``slurm_vgpu_agent`` and ``slurm_vgpu_node`` roles,
which may update any placement, GPU or node row: one node's stolen login could end another node's
slices or mark its GPUs down. Now a login of those roles writes only the rows of the nodes that
``node_logins`` maps it to: its node's own row, that node's GPUs, and placements on them. A login
mapped to ``*`` acts for every node (one login for all nodes, as before; not least privilege).
Reading stays open to every role; the placement daemon's role is not restricted.

Logins that were members of those two roles when this revision ran are mapped to ``*``, so an
upgrade changes nothing until an admin gives each node its own login
(``slurm-vgpu db node-login LOGIN NODE``; the Ansible roles do it).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

NODE_ROLES = "slurm_vgpu_agent, slurm_vgpu_node"

POLICIES = f"""
GRANT SELECT ON node_logins TO slurm_vgpu_reader, slurm_vgpu_placement, {NODE_ROLES};

INSERT INTO node_logins (login, node)
SELECT DISTINCT member.rolname, '*'
FROM pg_auth_members m
JOIN pg_roles grp ON grp.oid = m.roleid
JOIN pg_roles member ON member.oid = m.member
WHERE grp.rolname IN ('slurm_vgpu_agent', 'slurm_vgpu_node') AND member.rolcanlogin
ON CONFLICT DO NOTHING;

-- Called from the policies below, so current_user is the login writing the row.
CREATE FUNCTION acts_for(node text) RETURNS boolean LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM node_logins l WHERE l.login = current_user AND l.node IN ($1, '*'))
$$;
CREATE FUNCTION node_of_gpu(gpu text) RETURNS text LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT node FROM gpus WHERE uuid = $1
$$;

ALTER TABLE nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE gpus ENABLE ROW LEVEL SECURITY;
ALTER TABLE placements ENABLE ROW LEVEL SECURITY;

CREATE POLICY everyone_reads ON nodes FOR SELECT USING (true);
CREATE POLICY own_node_registers ON nodes FOR INSERT TO slurm_vgpu_agent WITH CHECK (acts_for(name));
CREATE POLICY own_node_heartbeats ON nodes FOR UPDATE TO slurm_vgpu_agent
    USING (acts_for(name)) WITH CHECK (acts_for(name));

CREATE POLICY everyone_reads ON gpus FOR SELECT USING (true);
CREATE POLICY placement_drains ON gpus FOR UPDATE TO slurm_vgpu_placement USING (true) WITH CHECK (true);
CREATE POLICY own_node_registers ON gpus FOR INSERT TO slurm_vgpu_agent WITH CHECK (acts_for(node));
CREATE POLICY own_node_updates ON gpus FOR UPDATE TO slurm_vgpu_agent
    USING (acts_for(node)) WITH CHECK (acts_for(node));

CREATE POLICY everyone_reads ON placements FOR SELECT USING (true);
CREATE POLICY placement_places ON placements FOR INSERT TO slurm_vgpu_placement WITH CHECK (true);
CREATE POLICY placement_updates ON placements FOR UPDATE TO slurm_vgpu_placement USING (true) WITH CHECK (true);
CREATE POLICY own_node_updates ON placements FOR UPDATE TO {NODE_ROLES}
    USING (acts_for(node_of_gpu(gpu_uuid))) WITH CHECK (acts_for(node_of_gpu(gpu_uuid)));
"""

DROP = """
DROP POLICY everyone_reads ON nodes;
DROP POLICY own_node_registers ON nodes;
DROP POLICY own_node_heartbeats ON nodes;
DROP POLICY everyone_reads ON gpus;
DROP POLICY placement_drains ON gpus;
DROP POLICY own_node_registers ON gpus;
DROP POLICY own_node_updates ON gpus;
DROP POLICY everyone_reads ON placements;
DROP POLICY placement_places ON placements;
DROP POLICY placement_updates ON placements;
DROP POLICY own_node_updates ON placements;
ALTER TABLE nodes DISABLE ROW LEVEL SECURITY;
ALTER TABLE gpus DISABLE ROW LEVEL SECURITY;
ALTER TABLE placements DISABLE ROW LEVEL SECURITY;
DROP FUNCTION acts_for(text);
DROP FUNCTION node_of_gpu(text);
"""


def upgrade() -> None:
    op.create_table(
        'node_logins',
        sa.Column('login', sa.Text(), nullable=False),
        sa.Column('node', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('login', name=op.f('pk_node_logins')),
    )
    op.execute(POLICIES)


def downgrade() -> None:
    op.execute(DROP)
    op.drop_table('node_logins')
