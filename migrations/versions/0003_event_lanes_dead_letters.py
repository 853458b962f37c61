"""event lanes, dead letters, retention indexes

The outbox gets a generated `lane` (a hash of tenant_id over OUTBOX_LANES lanes), so
the writer needs no new value; relays take one lane at a time. Events NATS refuses or
that keep failing move to outbox_dead_letters. Indexes let retention prune old rows in
small batches without scanning.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Must match services.common.models.OUTBOX_LANES (changing it is a migration of its own).
LANE_EXPRESSION = "((hashtext(tenant_id) & 2147483647) % 8)::smallint"


def upgrade() -> None:
    op.add_column(
        "outbox",
        sa.Column(
            "lane", sa.SmallInteger(), sa.Computed(LANE_EXPRESSION, persisted=True), nullable=False
        ),
    )
    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    op.create_index(
        "ix_outbox_lane_unpublished",
        "outbox",
        ["lane", "seq"],
        postgresql_where=sa.text("published_at IS NULL"),
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
    op.create_table(
        "outbox_dead_letters",
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_outbox_dead_letters_tenant_id", "outbox_dead_letters", ["tenant_id"])
    op.create_index("ix_outbox_dead_letters_failed_at", "outbox_dead_letters", ["failed_at"])
    op.create_index(
        "ix_webhook_deliveries_finished",
        "webhook_deliveries",
        ["created_at"],
        postgresql_where=sa.text("status <> 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_finished", table_name="webhook_deliveries")
    op.drop_table("outbox_dead_letters")
    op.drop_index("ix_outbox_created_at", table_name="outbox")
    op.drop_index("ix_outbox_lane_unpublished", table_name="outbox")
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["seq"], postgresql_where=sa.text("published_at IS NULL")
    )
    op.drop_column("outbox", "lane")
