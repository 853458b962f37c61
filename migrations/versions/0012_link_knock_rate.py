"""a call link's knock rate, kept with the link (one bucket for every replica)

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable (expand only): NULL is a full bucket, so links made by the previous
    # revision's code during a rollout start with the whole burst.
    op.add_column("call_links", sa.Column("knock_tokens", sa.Float(), nullable=True))
    op.add_column(
        "call_links", sa.Column("knocked_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("call_links", "knocked_at")
    op.drop_column("call_links", "knock_tokens")
