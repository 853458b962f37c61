"""webhook delivery records, replays and the events feed

webhook_deliveries: the URL, last status code and attempt time of each delivery; a retry
window a manual retry restarts; replays (a replay's deliveries repeat an event id, so
the unique constraint takes the replay id too, under the same name, which the intake
of the previous release names in its ON CONFLICT); indexes for the list and for a
replay's next event.

outbox: the writing transaction's id (xid8) for the events feed's order and horizon, with
indexes for the feed and for replay windows. Existing rows read as xid 0 (a constant
default, no table rewrite); new rows get pg_current_xact_id() from the database, whatever
release writes them.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_deliveries", sa.Column("url", sa.String(), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("last_status_code", sa.Integer(), nullable=True))
    op.add_column(
        "webhook_deliveries",
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "webhook_deliveries", sa.Column("give_up_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "webhook_deliveries",
        sa.Column("replay_id", sa.String(), server_default="", nullable=False),
    )
    op.add_column("webhook_deliveries", sa.Column("replay_seq", sa.Integer(), nullable=True))
    op.create_index(
        "uq_webhook_deliveries_event_replay",
        "webhook_deliveries",
        ["tenant_id", "event_id", "replay_id"],
        unique=True,
    )
    op.drop_constraint("uq_webhook_deliveries_event", "webhook_deliveries", type_="unique")
    op.execute(
        "ALTER TABLE webhook_deliveries ADD CONSTRAINT uq_webhook_deliveries_event"
        " UNIQUE USING INDEX uq_webhook_deliveries_event_replay"
    )
    op.create_index(
        "ix_webhook_deliveries_tenant_created",
        "webhook_deliveries",
        ["tenant_id", "created_at", "id"],
    )
    op.create_index(
        "ix_webhook_deliveries_replay",
        "webhook_deliveries",
        ["replay_id", "replay_seq"],
        postgresql_where=sa.text("replay_id <> ''"),
    )

    op.execute("ALTER TABLE outbox ADD COLUMN xid xid8 NOT NULL DEFAULT '0'")
    op.execute("ALTER TABLE outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
    # Built here without CONCURRENTLY (one transaction, under the migration lock): on a
    # large outbox, build them by hand with CREATE INDEX CONCURRENTLY first, same names.
    op.create_index(
        "ix_outbox_tenant_feed", "outbox", ["tenant_id", "xid", "seq"], if_not_exists=True
    )
    op.create_index(
        "ix_outbox_tenant_created_at", "outbox", ["tenant_id", "created_at"], if_not_exists=True
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_tenant_created_at", table_name="outbox")
    op.drop_index("ix_outbox_tenant_feed", table_name="outbox")
    op.drop_column("outbox", "xid")
    op.drop_index("ix_webhook_deliveries_replay", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_tenant_created", table_name="webhook_deliveries")
    op.execute("DELETE FROM webhook_deliveries WHERE replay_id <> ''")
    op.drop_constraint("uq_webhook_deliveries_event", "webhook_deliveries", type_="unique")
    op.create_unique_constraint(
        "uq_webhook_deliveries_event", "webhook_deliveries", ["tenant_id", "event_id"]
    )
    for column in ("replay_seq", "replay_id", "give_up_at", "last_attempt_at", "last_status_code"):
        op.drop_column("webhook_deliveries", column)
    op.drop_column("webhook_deliveries", "url")
