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
    """Takes `user` out of the room's live call, if any, under its row lock. Call after
    deleting the membership, in the same transaction: a start by the user holds a share
    lock on the membership row, so the delete waits for it and this then finds the call
    it made; and the call's version moves on in any case, so a transition that waited for
    the call's lock reads the membership again (store.REREAD)."""
    loaded = await store.lock_live_call(conn, tenant=tenant, room=room, user=user)
    if loaded.call is None:
        return None
    change = domain.member_removed(loaded.call, user, loaded.now)
    if change.events:
        await store.save(conn, loaded.call, change, call_to_pb(change.call), loaded.now)
    else:  # not a participant: nothing to change but the version
        await store.bump(conn, loaded.call.id)
    return change
