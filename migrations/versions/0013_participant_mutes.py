"""a moderator's mutes, kept with the participant until they leave the call

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant server default: PostgreSQL adds the columns without rewriting the table,
    # and rows written by the previous revision's code during a rollout are unmuted.
    for column in ("muted_audio", "muted_video"):
        op.add_column(
            "call_participants",
            sa.Column(column, sa.Boolean(), server_default=sa.text("false"), nullable=False),
        )


def downgrade() -> None:
    for column in ("muted_video", "muted_audio"):
        op.drop_column("call_participants", column)
