"""calls: whether LiveKit told us of the call's media room (only those are deleted at end)

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A server default (expand only): calls that code of the previous revision starts
    # during a rollout get false, and that code deletes every ended call's room anyway.
    op.add_column(
        "calls",
        sa.Column("media_used", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    # Live calls from before this revision may have a media room nobody recorded: they
    # keep the old rule (their room is deleted at the end).
    op.execute("UPDATE calls SET media_used = true WHERE status IN ('ringing', 'active')")


def downgrade() -> None:
    op.drop_column("calls", "media_used")
