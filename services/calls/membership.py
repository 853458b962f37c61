"""Room membership is the truth for calls: a member removed from a room leaves its live
call in the same transaction (chat's RemoveMember calls this)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from services.calls.domain import Call, Change, RoomRef
from services.calls.transitions import CallTransitions


async def leave_live_call(
    calls: CallTransitions, conn: AsyncConnection, room: RoomRef, user: str
) -> tuple[Call, Change] | None:
    """Takes `user` out of the room's live call, if any, in chat's transaction `conn`.
    Call after deleting the membership: a start by the user holds a share lock on the
    membership row, so the delete waits for it and this then finds the call it made; and
    the call's version moves on in any case, so a transition that waited for the call's
    lock reads the membership again (store.REREAD). Once `conn` committed, pass the
    result to `calls.effects.after_commit`."""
    # The call store speaks psycopg: the same connection, so the same transaction.
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    return await calls.member_removed(raw, room, user)
