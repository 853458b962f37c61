"""Call rows: every read that precedes a transition takes the call's row lock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models import CALLS, LIVE_STATUSES, PARTICIPANTS

_LIVE = CALLS.c.status.in_(LIVE_STATUSES)


@dataclass(frozen=True)
class Snapshot:
    """A call and its participants as of the current transaction."""

    call: Row[Any]
    participants: list[Row[Any]]

    def participant(self, user_id: str) -> Row[Any] | None:
        return next((p for p in self.participants if p.user_id == user_id), None)

    def user_ids(self) -> list[str]:
        return [p.user_id for p in self.participants]

    def joined(self) -> list[str]:
        return [p.user_id for p in self.participants if p.state == "joined"]


async def insert_live_call(conn: AsyncConnection, values: dict[str, Any]) -> bool:
    """Inserts the room's live call; False when another live call won the room first."""
    stmt = (
        pg_insert(CALLS)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[CALLS.c.room_id], index_where=text("status IN ('ringing', 'active')")
        )
        .returning(CALLS.c.id)
    )
    return (await conn.execute(stmt)).first() is not None


async def lock_live_call(conn: AsyncConnection, *, tenant_id: str, room_id: str) -> Row[Any] | None:
    stmt = (
        select(CALLS)
        .where(CALLS.c.tenant_id == tenant_id, CALLS.c.room_id == room_id, _LIVE)
        .with_for_update()
    )
    return (await conn.execute(stmt)).first()


async def lock_call(
    conn: AsyncConnection, *, tenant_id: str, room_id: str, call_id: str
) -> Row[Any] | None:
    stmt = (
        select(CALLS)
        .where(CALLS.c.id == call_id, CALLS.c.room_id == room_id, CALLS.c.tenant_id == tenant_id)
        .with_for_update()
    )
    return (await conn.execute(stmt)).first()


async def lock_call_by_livekit_room(conn: AsyncConnection, livekit_room: str) -> Row[Any] | None:
    stmt = select(CALLS).where(CALLS.c.livekit_room == livekit_room).with_for_update()
    return (await conn.execute(stmt)).first()


async def live_call_id(conn: AsyncConnection, *, tenant_id: str, room_id: str) -> str | None:
    stmt = select(CALLS.c.id).where(
        CALLS.c.tenant_id == tenant_id, CALLS.c.room_id == room_id, _LIVE
    )
    return (await conn.execute(stmt)).scalar()


async def snapshot(conn: AsyncConnection, call_id: str) -> Snapshot:
    call = (await conn.execute(select(CALLS).where(CALLS.c.id == call_id))).one()
    parts = (
        await conn.execute(
            select(PARTICIPANTS)
            .where(PARTICIPANTS.c.call_id == call_id)
            .order_by(PARTICIPANTS.c.user_id)
        )
    ).all()
    return Snapshot(call, list(parts))


async def update_call(conn: AsyncConnection, call_id: str, **values: Any) -> None:
    await conn.execute(update(CALLS).where(CALLS.c.id == call_id).values(**values))


async def add_participants(
    conn: AsyncConnection, *, tenant_id: str, call_id: str, joined: list[str], invited: list[str]
) -> None:
    rows = [
        {
            "call_id": call_id,
            "user_id": u,
            "tenant_id": tenant_id,
            "state": "joined",
            "ever_joined": True,
        }
        for u in joined
    ] + [
        {
            "call_id": call_id,
            "user_id": u,
            "tenant_id": tenant_id,
            "state": "invited",
            "ever_joined": False,
        }
        for u in invited
    ]
    if not rows:
        return
    now = func.now()
    stmt = pg_insert(PARTICIPANTS).values(
        [{**r, "joined_at": now if r["state"] == "joined" else None} for r in rows]
    )
    await conn.execute(stmt.on_conflict_do_nothing())


async def set_joined(conn: AsyncConnection, *, tenant_id: str, call_id: str, user_id: str) -> None:
    """Joins (or rejoins) a user; a user added to the room after the call started gets a row."""
    stmt = pg_insert(PARTICIPANTS).values(
        call_id=call_id,
        user_id=user_id,
        tenant_id=tenant_id,
        state="joined",
        joined_at=func.now(),
        ever_joined=True,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[PARTICIPANTS.c.call_id, PARTICIPANTS.c.user_id],
        set_={"state": "joined", "joined_at": func.now(), "left_at": None, "ever_joined": True},
    )
    await conn.execute(stmt)


async def set_state(conn: AsyncConnection, *, call_id: str, user_id: str, state: str) -> None:
    values: dict[str, Any] = {"state": state}
    if state == "left":
        values["left_at"] = func.now()
    await conn.execute(
        update(PARTICIPANTS)
        .where(PARTICIPANTS.c.call_id == call_id, PARTICIPANTS.c.user_id == user_id)
        .values(**values)
    )


async def leave_all(conn: AsyncConnection, *, call_id: str) -> None:
    await conn.execute(
        update(PARTICIPANTS)
        .where(PARTICIPANTS.c.call_id == call_id, PARTICIPANTS.c.state == "joined")
        .values(state="left", left_at=func.now())
    )


async def lock_due_ringing(conn: AsyncConnection, limit: int) -> list[Row[Any]]:
    """Ringing calls past their deadline; SKIP LOCKED lets replicas share the sweep."""
    stmt = (
        select(CALLS)
        .where(CALLS.c.status == "ringing", CALLS.c.ring_deadline <= func.now())
        .order_by(CALLS.c.ring_deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await conn.execute(stmt)).all())


async def lock_pending_cleanups(conn: AsyncConnection, limit: int) -> list[Row[Any]]:
    stmt = (
        select(CALLS.c.id, CALLS.c.livekit_room)
        .where(CALLS.c.livekit_cleanup_pending)
        .order_by(CALLS.c.ended_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await conn.execute(stmt)).all())
