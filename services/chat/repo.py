"""Rooms, members and the room timeline."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models import MEMBERS, MESSAGES, ROOMS, new_id


async def create_room(
    conn: AsyncConnection, *, tenant_id: str, name: str, members: list[str]
) -> str:
    room_id = new_id("rm")
    await conn.execute(insert(ROOMS).values(id=room_id, tenant_id=tenant_id, name=name))
    await conn.execute(
        insert(MEMBERS),
        [{"room_id": room_id, "user_id": m, "tenant_id": tenant_id} for m in members],
    )
    return room_id


async def get_room(conn: AsyncConnection, *, tenant_id: str, room_id: str) -> Row[Any] | None:
    stmt = select(ROOMS).where(ROOMS.c.id == room_id, ROOMS.c.tenant_id == tenant_id)
    return (await conn.execute(stmt)).first()


async def lock_room(conn: AsyncConnection, *, tenant_id: str, room_id: str) -> int | None:
    """Locks the room row (membership changes of one room run one at a time) and
    returns its member count, or None when the room is not the tenant's."""
    locked = (
        await conn.execute(
            select(ROOMS.c.id)
            .where(ROOMS.c.id == room_id, ROOMS.c.tenant_id == tenant_id)
            .with_for_update()
        )
    ).first()
    if locked is None:
        return None
    count = await conn.execute(
        select(func.count()).select_from(MEMBERS).where(MEMBERS.c.room_id == room_id)
    )
    return int(count.scalar_one())


async def add_member(conn: AsyncConnection, *, tenant_id: str, room_id: str, user_id: str) -> bool:
    """Adds a member; False when the user already was one."""
    stmt = pg_insert(MEMBERS).values(room_id=room_id, user_id=user_id, tenant_id=tenant_id)
    added = await conn.execute(stmt.on_conflict_do_nothing().returning(MEMBERS.c.user_id))
    return added.first() is not None


async def remove_member(
    conn: AsyncConnection, *, tenant_id: str, room_id: str, user_id: str
) -> None:
    await conn.execute(
        delete(MEMBERS).where(
            MEMBERS.c.room_id == room_id,
            MEMBERS.c.user_id == user_id,
            MEMBERS.c.tenant_id == tenant_id,
        )
    )


async def insert_message(
    conn: AsyncConnection,
    *,
    tenant_id: str,
    room_id: str,
    sender_id: str,
    parts: list[dict[str, Any]],
    call_id: str | None = None,
) -> Row[Any] | None:
    """Appends a message; with call_id, at most once per call (None when it already exists)."""
    stmt = pg_insert(MESSAGES).values(
        id=new_id("msg"),
        tenant_id=tenant_id,
        room_id=room_id,
        sender_id=sender_id,
        parts=parts,
        call_id=call_id,
    )
    if call_id is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=[MESSAGES.c.call_id])
    return (await conn.execute(stmt.returning(MESSAGES))).first()


async def list_messages(
    conn: AsyncConnection, *, tenant_id: str, room_id: str, before_seq: int | None, limit: int
) -> list[Row[Any]]:
    """Newest first; `before_seq` is the keyset cursor of the previous page."""
    stmt = select(MESSAGES).where(MESSAGES.c.room_id == room_id, MESSAGES.c.tenant_id == tenant_id)
    if before_seq is not None:
        stmt = stmt.where(MESSAGES.c.seq < before_seq)
    stmt = stmt.order_by(MESSAGES.c.seq.desc()).limit(limit)
    return list((await conn.execute(stmt)).all())
