"""Room membership is the truth for calls: a member removed from a room leaves its live
call in the same transaction (the chat service calls this)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from services.calls import domain, store
from services.calls.convert import call_to_pb
from services.calls.domain import Change


async def leave_live_call(
    conn: AsyncConnection[Any], *, tenant: str, room: str, user: str
) -> Change | None:
    """Takes `user` out of the room's live call, if any, under its row lock. Call before
    deleting the membership: a transition waiting for the lock then reads the membership
    as it is after this transaction."""
    loaded = await store.lock_live_call(conn, tenant=tenant, room=room, user=user)
    if loaded.call is None:
        return None
    change = domain.member_removed(loaded.call, user, loaded.now)
    await store.save(conn, loaded.call, change, call_to_pb(change.call), loaded.now)
    return change
