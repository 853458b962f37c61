"""Call history: one `data-call` message in the room timeline per ended call."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from sendsar.chat.v1 import chat_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from services.calls.convert import timestamp
from services.calls.store import Snapshot
from services.chat.repo import insert_message

COMPLETED, MISSED, DECLINED = "completed", "missed", "declined"


def outcome(snap: Snapshot) -> str:
    if snap.call.end_reason == "declined":
        return DECLINED
    return COMPLETED if snap.call.answered_at is not None else MISSED


def record(snap: Snapshot) -> chat_pb2.CallRecord:
    c = snap.call
    duration = 0
    if c.answered_at is not None and c.ended_at is not None:
        duration = max(0, round((c.ended_at - c.answered_at).total_seconds()))
    return chat_pb2.CallRecord(
        call_id=c.id,
        type=c.type,
        mode=c.mode,
        outcome=outcome(snap),
        end_reason=c.end_reason or "",
        initiator=c.created_by,
        participants=[p.user_id for p in snap.participants if p.ever_joined],
        started_at=timestamp(c.created_at),
        answered_at=timestamp(c.answered_at),
        ended_at=timestamp(c.ended_at),
        duration_seconds=duration,
    )


async def write(conn: AsyncConnection, snap: Snapshot) -> None:
    """Idempotent: the unique call_id on messages keeps it to one message per call."""
    part = chat_pb2.Part(type="data-call", data=record(snap))
    parts: list[dict[str, Any]] = [json_format.MessageToDict(part)]
    await insert_message(
        conn,
        tenant_id=snap.call.tenant_id,
        room_id=snap.call.room_id,
        sender_id=snap.call.created_by,
        parts=parts,
        call_id=snap.call.id,
    )
