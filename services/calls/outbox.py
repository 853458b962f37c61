"""Call events written to the outbox in the transaction that made the change."""

from __future__ import annotations

from collections.abc import Iterable

from sendsar.calls.v1 import events_pb2
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.calls.convert import call_to_pb
from services.calls.store import Snapshot
from services.common.models import OUTBOX, new_id, utcnow
from services.events.types import NOTIFY_CHANNEL, subject


async def emit(
    conn: AsyncConnection,
    snap: Snapshot,
    event_type: str,
    *,
    user_id: str,
    recipients: Iterable[str],
) -> events_pb2.CallEvent:
    event = events_pb2.CallEvent(
        id=new_id("evt"),
        type=event_type,
        tenant_id=snap.call.tenant_id,
        user_id=user_id,
        call=call_to_pb(snap),
        recipient_user_ids=sorted(set(recipients)),
    )
    event.occurred_at.FromDatetime(utcnow())
    await conn.execute(
        insert(OUTBOX).values(
            id=event.id,
            tenant_id=snap.call.tenant_id,
            subject=subject(snap.call.tenant_id, event_type),
            payload=event.SerializeToString(),
        )
    )
    # Delivered at commit; wakes the relays at once instead of at their next poll.
    await conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
    return event
