"""call log and usage: keyset indexes, the call's creation time on its participants, and
the joined time of a participant's earlier joins

- `call_participants.call_created_at`: the call's `created_at`, so that "the calls of a
  user, newest first" is one index range (`ix_call_participants_user_calls`) however
  many calls the user has. New rows get it from the call path's write; rows written by
  an older release during a rollout get it from a trigger (`fill_call_created_at`), to be
  dropped by a later contract migration once no such release runs.
- `call_participants.joined_before`: how long the participant was joined, while the call
  was answered, before their current `joined_at` (a rejoin overwrites `joined_at` and
  `left_at`; the call path adds the interval it replaces here). Participant minutes are
  then exact: `joined_before` plus the last interval, which `joinedAt`/`leftAt` show.
- Indexes for `GET /v1/calls` and `GET /v1/usage`, each ordered by `(created_at, id)`,
  the log's keyset: the tenant's calls (carrying what usage and the list's filters read,
  so both scan it index-only), the tenant's live calls, a room's calls, a user's
  participations, and the participants who joined (what usage reads of them). The first
  two on calls replace the single-column `ix_calls_tenant_id` and `ix_calls_room_id`,
  their prefixes.

Every statement is idempotent (IF NOT EXISTS, a backfill of the rows still NULL), so a
large installation can create the indexes CONCURRENTLY and backfill in batches before
upgrading, and this migration then finds nothing left to do (docs/decisions.md, "Call
log and usage").

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_calls_tenant_created": """
        CREATE INDEX IF NOT EXISTS ix_calls_tenant_created ON calls (tenant_id, created_at, id)
        INCLUDE (type, status, end_reason, answered_at, ended_at)""",
    "ix_calls_live_tenant": """
        CREATE INDEX IF NOT EXISTS ix_calls_live_tenant ON calls (tenant_id, created_at, id)
        WHERE status IN ('ringing', 'active')""",
    "ix_calls_room_created": """
        CREATE INDEX IF NOT EXISTS ix_calls_room_created ON calls (room_id, created_at, id)""",
    "ix_call_participants_user_calls": """
        CREATE INDEX IF NOT EXISTS ix_call_participants_user_calls
        ON call_participants (tenant_id, user_id, call_created_at, call_id)""",
    "ix_call_participants_usage": """
        CREATE INDEX IF NOT EXISTS ix_call_participants_usage
        ON call_participants (tenant_id, call_created_at, call_id)
        INCLUDE (joined_at, left_at, joined_before) WHERE joined_at IS NOT NULL""",
}


def upgrade() -> None:
    op.execute("ALTER TABLE call_participants ADD COLUMN IF NOT EXISTS call_created_at timestamptz")
    op.execute(
        "ALTER TABLE call_participants"
        " ADD COLUMN IF NOT EXISTS joined_before interval NOT NULL DEFAULT '0'"
    )
    op.execute(
        """
        UPDATE call_participants p SET call_created_at = c.created_at
        FROM calls c WHERE c.id = p.call_id AND p.call_created_at IS NULL
        """
    )
    # Writers of the previous release insert participants without it (expand/contract).
    op.execute(
        """
        CREATE OR REPLACE FUNCTION fill_call_created_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            SELECT created_at INTO NEW.call_created_at FROM calls WHERE id = NEW.call_id;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE TRIGGER fill_call_created_at BEFORE INSERT ON call_participants
        FOR EACH ROW WHEN (NEW.call_created_at IS NULL) EXECUTE FUNCTION fill_call_created_at()
        """
    )
    for statement in INDEXES.values():
        op.execute(statement)
    op.execute("DROP INDEX IF EXISTS ix_calls_tenant_id")
    op.execute("DROP INDEX IF EXISTS ix_calls_room_id")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_calls_room_id ON calls (room_id)")
    op.execute("CREATE INDEX IF NOT EXISTS ix_calls_tenant_id ON calls (tenant_id)")
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("DROP TRIGGER IF EXISTS fill_call_created_at ON call_participants")
    op.execute("DROP FUNCTION IF EXISTS fill_call_created_at()")
    op.execute("ALTER TABLE call_participants DROP COLUMN IF EXISTS joined_before")
    op.execute("ALTER TABLE call_participants DROP COLUMN IF EXISTS call_created_at")
