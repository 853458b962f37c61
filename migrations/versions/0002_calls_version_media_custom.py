"""calls: version (bumped by every transition), media_deadline (no ghost calls), custom;
a user's calls by user id

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "calls", sa.Column("version", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("calls", sa.Column("media_deadline", sa.DateTime(timezone=True)))
    op.add_column("calls", sa.Column("custom", postgresql.JSONB()))
    op.create_index(
        "ix_calls_media_deadline",
        "calls",
        ["media_deadline"],
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index("ix_call_participants_user_id", "call_participants", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_call_participants_user_id", table_name="call_participants")
    op.drop_index("ix_calls_media_deadline", table_name="calls")
    op.drop_column("calls", "custom")
    op.drop_column("calls", "media_deadline")
    op.drop_column("calls", "version")
