"""`call.sync`: the live calls a user should see after (re)connecting.

One query, kept apart so the call model's owner can re-point it: the ringing or active
calls of the tenant that the user is a participant of and whose room still has the user
as a member, each rendered exactly as REST renders a Call.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls import store
from services.calls.convert import call_to_pb
from services.common.models import CALLS, LIVE_STATUSES, MEMBERS, PARTICIPANTS


async def live_calls(engine: AsyncEngine, *, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
    query = (
        select(CALLS.c.id)
        .join(
            PARTICIPANTS,
            and_(PARTICIPANTS.c.call_id == CALLS.c.id, PARTICIPANTS.c.user_id == user_id),
        )
        .join(MEMBERS, and_(MEMBERS.c.room_id == CALLS.c.room_id, MEMBERS.c.user_id == user_id))
        .where(CALLS.c.tenant_id == tenant_id, CALLS.c.status.in_(LIVE_STATUSES))
        .order_by(CALLS.c.created_at)
    )
    async with engine.connect() as conn:
        ids = (await conn.execute(query)).scalars().all()
        snaps = [await store.snapshot(conn, call_id) for call_id in ids]
    return [
        json_format.MessageToDict(call_to_pb(snap), always_print_fields_with_no_presence=True)
        for snap in snaps
    ]
