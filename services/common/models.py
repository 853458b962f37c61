"""The database schema: SQLModel tables, every one scoped by tenant_id.

Migrations (migrations/versions) are written from these; the application uses
SQLAlchemy Core statements over the same tables so that each state transition
is a single conditional statement.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import UserDefinedType
from sqlmodel import Field, SQLModel

LIVE_STATUSES = ("ringing", "active")

# The outbox's relay lane: a hash of the tenant over 8 lanes (services/events/relay.py).
OUTBOX_LANES = 8
OUTBOX_LANE_EXPRESSION = f"((hashtext(tenant_id) & 2147483647) % {OUTBOX_LANES})::smallint"


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (no wraparound), compared like a number."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(nullable: bool = False, default_now: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(
            DateTime(timezone=True),
            nullable=nullable,
            server_default=text("now()") if default_now else None,
        ),
    )


def _flag() -> Any:
    """A boolean column that is false unless set, for rows written before it existed too
    (the server default fills them when the column is added)."""
    return Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("busy_policy IN ('ring', 'reject')", name="ck_tenants_busy_policy"),
        CheckConstraint("lobby IN ('host', 'off')", name="ck_tenants_lobby"),
    )

    id: str = Field(primary_key=True)
    name: str
    created_at: datetime | None = _ts(default_now=True)
    calls_enabled: bool = True
    max_participants: int = 8
    ring_timeout_seconds: int = 45
    default_type: str = "video"
    # A 1:1 callee already joined in another live call: "ring" (call waiting) or "reject".
    busy_policy: str = Field(
        default="ring", sa_column=Column(String, nullable=False, server_default="ring")
    )
    # Guests (people outside the tenant's app) may join calls through links.
    guests_enabled: bool = _flag()
    # "host": guests wait in the lobby until admitted; "off": they join at once.
    lobby: str = Field(
        default="host", sa_column=Column(String, nullable=False, server_default="host")
    )


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True)  # the public key id embedded in the key
    tenant_id: str = Field(
        sa_column=Column(String, ForeignKey("tenants.id"), nullable=False, index=True)
    )
    secret_hash: str  # sha256 of the secret part; the plaintext is never stored
    created_at: datetime | None = _ts(default_now=True)
    revoked_at: datetime | None = _ts(nullable=True)
    # Bookkeeping for the key list: refreshed at most once a minute per key.
    last_used_at: datetime | None = _ts(nullable=True)


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"

    tenant_id: str = Field(sa_column=Column(String, ForeignKey("tenants.id"), primary_key=True))
    url: str
    events: list[str] = Field(sa_column=Column(JSONB, nullable=False))
    secret: str  # needed in clear to sign deliveries
    updated_at: datetime | None = _ts(default_now=True)


class Room(SQLModel, table=True):
    __tablename__ = "rooms"

    id: str = Field(primary_key=True)
    tenant_id: str = Field(
        sa_column=Column(String, ForeignKey("tenants.id"), nullable=False, index=True)
    )
    name: str = ""
    created_at: datetime | None = _ts(default_now=True)


class RoomMember(SQLModel, table=True):
    __tablename__ = "room_members"

    room_id: str = Field(sa_column=Column(String, ForeignKey("rooms.id"), primary_key=True))
    user_id: str = Field(primary_key=True)
    tenant_id: str = Field(index=True)
    added_at: datetime | None = _ts(default_now=True)


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_room_seq", "room_id", "seq"),)

    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    id: str = Field(sa_column=Column(String, nullable=False, unique=True))
    tenant_id: str = Field(index=True)
    room_id: str = Field(sa_column=Column(String, ForeignKey("rooms.id"), nullable=False))
    sender_id: str
    parts: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    # Set on call-history messages: exactly one history message per call.
    call_id: str | None = Field(default=None, sa_column=Column(String, unique=True, nullable=True))
    created_at: datetime | None = _ts(default_now=True)


class Call(SQLModel, table=True):
    __tablename__ = "calls"
    __table_args__ = (
        # At most one live call per room, whatever the number of replicas.
        Index(
            "uq_calls_live_room",
            "room_id",
            unique=True,
            postgresql_where=text("status IN ('ringing', 'active')"),
        ),
        Index(
            "ix_calls_ring_deadline", "ring_deadline", postgresql_where=text("status = 'ringing'")
        ),
        Index(
            "ix_calls_livekit_cleanup",
            "ended_at",
            postgresql_where=text("livekit_cleanup_pending"),
        ),
        Index(
            "ix_calls_media_deadline",
            "media_deadline",
            postgresql_where=text("status = 'active'"),
        ),
        # The call log and usage (services/calls/call_log.py, usage.py): (created_at, id)
        # is the log's keyset order.
        Index(
            "ix_calls_tenant_created",
            "tenant_id",
            "created_at",
            "id",
            postgresql_include=["type", "status", "end_reason", "answered_at", "ended_at"],
        ),
        Index(
            "ix_calls_live_tenant",
            "tenant_id",
            "created_at",
            "id",
            postgresql_where=text("status IN ('ringing', 'active')"),
        ),
        Index("ix_calls_room_created", "room_id", "created_at", "id"),
    )

    id: str = Field(primary_key=True)
    tenant_id: str
    room_id: str = Field(sa_column=Column(String, ForeignKey("rooms.id"), nullable=False))
    type: str
    mode: str
    status: str
    created_by: str
    created_at: datetime | None = _ts(default_now=True)
    answered_at: datetime | None = _ts(nullable=True)
    ended_at: datetime | None = _ts(nullable=True)
    end_reason: str | None = None
    ring_timeout_seconds: int
    ring_deadline: datetime | None = _ts(nullable=True)
    livekit_room: str = Field(sa_column=Column(String, nullable=False, unique=True))
    livekit_cleanup_pending: bool = False
    # LiveKit told us of the call's media room: only then is it deleted at the end.
    media_used: bool = _flag()
    # Bumped by every transition (which holds the row lock): a reader that waited for the
    # lock knows from it whether its snapshot of the participants is still current.
    version: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )
    # A live call with nobody in its media room ends (no_media) at this time.
    media_deadline: datetime | None = _ts(nullable=True)
    custom: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))


class CallParticipant(SQLModel, table=True):
    __tablename__ = "call_participants"
    __table_args__ = (
        Index(
            "ix_call_participants_ring_deadline",
            "ring_deadline",
            postgresql_where=text("ring_deadline IS NOT NULL"),
        ),
        Index(
            "ix_call_participants_joined",
            "tenant_id",
            "user_id",
            postgresql_where=text("state = 'joined'"),
        ),
        # A user's calls, newest first (the call log's userId filter).
        Index(
            "ix_call_participants_user_calls", "tenant_id", "user_id", "call_created_at", "call_id"
        ),
        # What usage reads of the participants who joined, in the calls' order.
        Index(
            "ix_call_participants_usage",
            "tenant_id",
            "call_created_at",
            "call_id",
            postgresql_include=["joined_at", "left_at", "joined_before"],
            postgresql_where=text("joined_at IS NOT NULL"),
        ),
    )

    call_id: str = Field(sa_column=Column(String, ForeignKey("calls.id"), primary_key=True))
    user_id: str = Field(primary_key=True, index=True)
    tenant_id: str
    state: str  # invited | joined | declined | left | missed | removed
    joined_at: datetime | None = _ts(nullable=True)
    left_at: datetime | None = _ts(nullable=True)
    ever_joined: bool = False
    # Set while this participant's devices ring (cleared when the ring stops).
    ring_deadline: datetime | None = _ts(nullable=True)
    # A guest's name, as they gave it (guests' user ids are "guest:<id>").
    name: str | None = None
    # A moderator's mutes, kept until the participant leaves (domain.Participant.muted).
    muted_audio: bool = _flag()
    muted_video: bool = _flag()
    # The call's created_at (the call log's order), written with the participant.
    call_created_at: datetime | None = _ts(nullable=True)
    # Time joined while the call was answered before joined_at (earlier joins of a
    # participant who left and came back); usage adds the last join's from the times.
    joined_before: timedelta = Field(
        default=timedelta(0),
        sa_column=Column(Interval, nullable=False, server_default=text("'0'")),
    )


class CallLink(SQLModel, table=True):
    """A link guests knock on a call with: `gl_<id>_<secret>`, stored hashed."""

    __tablename__ = "call_links"
    __table_args__ = (
        CheckConstraint("uses <= max_uses", name="ck_call_links_uses"),
        Index("ix_call_links_call", "call_id"),
    )

    id: str = Field(primary_key=True)
    tenant_id: str
    call_id: str = Field(sa_column=Column(String, ForeignKey("calls.id"), nullable=False))
    room_id: str
    secret_hash: str
    created_by: str | None = None  # the user who made it; None: the tenant's API key
    created_at: datetime | None = _ts(default_now=True)
    expires_at: datetime | None = _ts()
    max_uses: int
    uses: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    revoked_at: datetime | None = _ts(nullable=True)
    # The link's knock rate, a token bucket kept here so that every replica spends the
    # same one: the tokens left at the last knock (NULL: a full bucket) and its time.
    knock_tokens: float | None = None
    knocked_at: datetime | None = _ts(nullable=True)


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_lane_unpublished",
            "lane",
            "seq",
            postgresql_where=text("published_at IS NULL"),
        ),
        Index("ix_outbox_created_at", "created_at"),
        # The events feed (in feed order) and webhook replays (a window of one tenant).
        Index("ix_outbox_tenant_feed", "tenant_id", "xid", "seq"),
        Index("ix_outbox_tenant_created_at", "tenant_id", "created_at"),
    )

    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=True), primary_key=True)
    )
    id: str = Field(sa_column=Column(String, nullable=False, unique=True))
    tenant_id: str
    subject: str
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime | None = _ts(default_now=True)
    published_at: datetime | None = _ts(nullable=True)
    # W3C traceparent of the RPC that wrote the event (services/common/tracing.py); NULL
    # while tracing is off. The relay sends it on as a NATS header.
    traceparent: str | None = None
    # The relay lane of the tenant (services/events/relay.py), computed by the database.
    lane: int | None = Field(
        default=None,
        sa_column=Column(SmallInteger, Computed(OUTBOX_LANE_EXPRESSION, persisted=True)),
    )
    # The writing transaction's id (the events feed's order and horizon: docs/webhooks.md);
    # 0 for rows written before the column existed.
    xid: int | None = Field(
        default=None,
        sa_column=Column(Xid8, nullable=False, server_default=text("pg_current_xact_id()")),
    )


class OutboxDeadLetter(SQLModel, table=True):
    """An event the relay gave up on (NATS refused it, or it failed too often)."""

    __tablename__ = "outbox_dead_letters"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    id: str = Field(sa_column=Column(String, nullable=False, unique=True))
    tenant_id: str = Field(index=True)
    subject: str
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    error: str
    attempts: int
    created_at: datetime | None = _ts()
    failed_at: datetime | None = Field(
        default=None,
        sa_column=Column(
            DateTime(timezone=True), nullable=False, server_default=text("now()"), index=True
        ),
    )


class WebhookDelivery(SQLModel, table=True):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # One live delivery per event; each replay makes one more.
        UniqueConstraint("tenant_id", "event_id", "replay_id", name="uq_webhook_deliveries_event"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # The dispatcher's claim: tenants with pending rows, then each one's oldest due.
        Index(
            "ix_webhook_deliveries_tenant_due",
            "tenant_id",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # Retention prunes finished deliveries oldest first.
        Index(
            "ix_webhook_deliveries_finished",
            "created_at",
            postgresql_where=text("status <> 'pending'"),
        ),
        # The deliveries list, newest first.
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at", "id"),
        # A replay's next event, released when the one before it was tried.
        Index(
            "ix_webhook_deliveries_replay",
            "replay_id",
            "replay_seq",
            postgresql_where=text("replay_id <> ''"),
        ),
    )

    id: str = Field(primary_key=True)
    tenant_id: str = Field(index=True)
    event_id: str
    event_type: str
    body: str
    status: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime | None = _ts(default_now=True)
    lease_until: datetime | None = _ts(nullable=True)
    last_error: str | None = None
    created_at: datetime | None = _ts(default_now=True)
    delivered_at: datetime | None = _ts(nullable=True)
    # The endpoint's URL at intake, then at each attempt (NULL: queued by older code).
    url: str | None = None
    last_status_code: int | None = None
    last_attempt_at: datetime | None = _ts(nullable=True)
    # A failure after this marks the delivery failed (NULL: created_at + the retry
    # window); a retry restarts the window.
    give_up_at: datetime | None = _ts(nullable=True)
    # "" for the live delivery of an event; a replay's id and the event's place in it.
    replay_id: str = Field(default="", sa_column=Column(String, nullable=False, server_default=""))
    replay_seq: int | None = None


TENANTS = Tenant.__table__  # type: ignore[attr-defined]
API_KEYS = ApiKey.__table__  # type: ignore[attr-defined]
WEBHOOKS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
ROOMS = Room.__table__  # type: ignore[attr-defined]
MEMBERS = RoomMember.__table__  # type: ignore[attr-defined]
MESSAGES = Message.__table__  # type: ignore[attr-defined]
CALLS = Call.__table__  # type: ignore[attr-defined]
PARTICIPANTS = CallParticipant.__table__  # type: ignore[attr-defined]
OUTBOX = OutboxEvent.__table__  # type: ignore[attr-defined]
DEAD_LETTERS = OutboxDeadLetter.__table__  # type: ignore[attr-defined]
DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]
