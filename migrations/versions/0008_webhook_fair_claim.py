"""webhook deliveries: an index for the per-tenant claim

The dispatcher walks the tenants with pending deliveries and takes each one's oldest due
rows (services/webhooks/claim.py); both steps read this index in its order, so a claim
costs index probes per tenant visited and per row taken, whatever the statistics say.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Expand only: the older dispatcher's claim does not use it and is not hindered.
    op.create_index(
        "ix_webhook_deliveries_tenant_due",
        "webhook_deliveries",
        ["tenant_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_tenant_due", table_name="webhook_deliveries")
