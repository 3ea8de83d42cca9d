"""the capacity guard locks its GPUs instead of updating them, and takes writes under READ COMMITTED only

0002's guard bumped each touched GPU's ``placement_epoch``: an UPDATE, so that a writer under
REPEATABLE READ or SERIALIZABLE, whose snapshot predates its lock, would fail with a serialization
error instead of missing the slices committed before it got the lock. That UPDATE was a fifth of a
write of four placements (bench/guard: 1.09-1.21 ms a write with it, 0.86-0.96 ms without). Under
READ COMMITTED it is not needed: each query of the guard takes a fresh snapshot, so the check after
the lock sees what the writer before committed. A lock leaves nothing a REPEATABLE READ writer could
be refused on, so the guard now refuses writers above READ COMMITTED (SQLSTATE 25000, with a hint)
rather than bumping: one writer at each level could otherwise both commit. ``placement_epoch`` goes
with the bump. The guard is 0002's with that one step replaced; its rules are unchanged.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import context, op
from alembic.script import ScriptDirectory

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

LOCK = """\
    -- The check below must see every slice committed before this writer got its locks: under READ
    -- COMMITTED each of its queries takes a fresh snapshot; under the higher levels it would not.
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION 'placements are written under READ COMMITTED, not %',
            current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state',
                  HINT = 'SET TRANSACTION ISOLATION LEVEL READ COMMITTED before writing placements';
    END IF;
    -- One writer per GPU at a time. Locking in uuid order keeps two writers of the same GPUs from
    -- deadlocking; NO KEY UPDATE does not conflict with the foreign key's KEY SHARE locks.
    PERFORM 1 FROM gpus WHERE uuid = ANY (touched) ORDER BY uuid FOR NO KEY UPDATE;
"""


def _statement_guard():
    """0002's module: its guard is the one this revision changes (and a downgrade puts back)."""
    return ScriptDirectory.from_config(context.config).get_revision("0002").module


def upgrade() -> None:
    function = _statement_guard().GUARD.split("REVOKE ALL", 1)[0]
    start = function.index("    -- One writer per GPU at a time.")
    end = function.index("FOR NO KEY UPDATE);\n", start) + len("FOR NO KEY UPDATE);\n")
    assert "UPDATE gpus SET placement_epoch" in function[start:end], "not the guard this revision replaces a step of"
    op.execute(function[:start].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") + LOCK + function[end:])
    op.drop_column('gpus', 'placement_epoch')


def downgrade() -> None:
    op.add_column('gpus', sa.Column('placement_epoch', sa.BigInteger(), server_default='0', nullable=False))
    op.execute("DROP TRIGGER placements_guard_update ON placements")
    op.execute("DROP TRIGGER placements_guard_insert ON placements")
    op.execute("DROP FUNCTION placements_guard_statement()")
    op.execute(_statement_guard().GUARD)
