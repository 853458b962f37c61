"""outbox: the trace context of the transaction that wrote the event (tracing)

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default (expand only): NULL whenever tracing is off, and code
    # of the previous revision, which does not write it, keeps working during a rollout.
    op.add_column("outbox", sa.Column("traceparent", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "traceparent")
