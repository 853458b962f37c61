"""guests and the lobby: tenant settings, call links, participants' names

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Server defaults (expand only): tenants and rows written by the previous revision's
    # code during a rollout get guests off and no name.
    op.add_column(
        "tenants",
        sa.Column("guests_enabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column("tenants", sa.Column("lobby", sa.String(), server_default="host", nullable=False))
    op.create_check_constraint("ck_tenants_lobby", "tenants", "lobby IN ('host', 'off')")
    op.add_column("call_participants", sa.Column("name", sa.String(), nullable=True))
    op.create_table(
        "call_links",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("call_id", sa.String(), sa.ForeignKey("calls.id"), nullable=False),
        sa.Column("room_id", sa.String(), nullable=False),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("uses <= max_uses", name="ck_call_links_uses"),
    )
    op.create_index("ix_call_links_call", "call_links", ["call_id"])


def downgrade() -> None:
    op.drop_index("ix_call_links_call", table_name="call_links")
    op.drop_table("call_links")
    op.drop_column("call_participants", "name")
    op.drop_constraint("ck_tenants_lobby", "tenants")
    op.drop_column("tenants", "lobby")
    op.drop_column("tenants", "guests_enabled")
