"""ringing: a ring deadline per participant (group invites time out one by one, ring
tokens expire with it), the tenant's busy policy

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "call_participants", sa.Column("ring_deadline", sa.DateTime(timezone=True))
    )
    # Set while the participant's devices ring, cleared when the ring stops: the index
    # holds only the rings going on now.
    op.create_index(
        "ix_call_participants_ring_deadline",
        "call_participants",
        ["ring_deadline"],
        postgresql_where=sa.text("ring_deadline IS NOT NULL"),
    )
    # Who is in a call now (the busy check): joined rows are those of live calls only.
    op.create_index(
        "ix_call_participants_joined",
        "call_participants",
        ["tenant_id", "user_id"],
        postgresql_where=sa.text("state = 'joined'"),
    )
    # Invitations of live calls made before this revision ring for the call's window.
    op.execute(
        """
        UPDATE call_participants p
        SET ring_deadline = COALESCE(c.ring_deadline,
                                     c.created_at + make_interval(secs => c.ring_timeout_seconds))
        FROM calls c
        WHERE c.id = p.call_id AND p.state = 'invited' AND c.status IN ('ringing', 'active')
        """
    )
    op.add_column(
        "tenants",
        sa.Column("busy_policy", sa.String(), server_default="ring", nullable=False),
    )
    op.create_check_constraint(
        "ck_tenants_busy_policy", "tenants", "busy_policy IN ('ring', 'reject')"
    )


def downgrade() -> None:
    op.drop_constraint("ck_tenants_busy_policy", "tenants")
    op.drop_column("tenants", "busy_policy")
    op.drop_index("ix_call_participants_joined", table_name="call_participants")
    op.drop_index("ix_call_participants_ring_deadline", table_name="call_participants")
    op.drop_column("call_participants", "ring_deadline")
