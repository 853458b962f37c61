"""Room membership lookups shared by chat and calls."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import forbidden, not_found
from services.common.models import MEMBERS, ROOMS


async def room_members(conn: AsyncConnection, *, tenant_id: str, room_id: str) -> list[str]:
    """The room's members, sorted; 404 when the room is not the tenant's."""
    rows = (
        await conn.execute(
            select(ROOMS.c.id, MEMBERS.c.user_id)
            .select_from(ROOMS.outerjoin(MEMBERS, MEMBERS.c.room_id == ROOMS.c.id))
            .where(ROOMS.c.id == room_id, ROOMS.c.tenant_id == tenant_id)
            .order_by(MEMBERS.c.user_id)
        )
    ).all()
    if not rows:
        raise not_found("ROOM_NOT_FOUND", "room not found")
    return [r.user_id for r in rows if r.user_id is not None]


async def require_member(
    conn: AsyncConnection, *, tenant_id: str, room_id: str, user_id: str
) -> None:
    is_member = exists().where(MEMBERS.c.room_id == room_id, MEMBERS.c.user_id == user_id)
    row = (
        await conn.execute(
            select(is_member.label("member")).where(
                ROOMS.c.id == room_id, ROOMS.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        raise not_found("ROOM_NOT_FOUND", "room not found")
    if not row.member:
        raise forbidden("NOT_ROOM_MEMBER", "you are not a member of this room")
