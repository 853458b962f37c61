"""ChatService: rooms, members and the room timeline (member-only reads)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2
from sendsar.chat.v1 import chat_pb2 as pb
from sendsar.chat.v1 import chat_pb2_grpc as pb_grpc
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.calls import membership
from services.calls.domain import RoomRef
from services.calls.effects import CallEffects
from services.calls.media import Media
from services.calls.transitions import CallTransitions
from services.chat import repo
from services.common import validation
from services.common.auth import Kind, Policy, current_principal
from services.common.db import open_pool, transaction
from services.common.errors import conflict, invalid, not_found
from services.common.rooms import require_member, room_members
from services.common.server import Registration, ServiceParts
from services.common.settings import Settings

POLICIES = {
    "CreateRoom": Policy.API_KEY,
    "AddMember": Policy.API_KEY,
    "RemoveMember": Policy.API_KEY,
    "ListMessages": Policy.ANY,
    "PostMessage": Policy.SESSION,
}

MAX_MEMBERS = 1000

MAX_PARTS = 20
MAX_TEXT = 4000
MAX_NAME = 200
MAX_PAGE_TOKEN = 64

# Envoy's transcoder refuses a response above 4 MiB (max_response_body_size), so a page
# of messages stops at half of that, measured pessimistically: every byte of protobuf
# as a six-byte JSON escape, plus the field names and zero values JSON prints.
PAGE_JSON_BUDGET = 2 * 1024 * 1024


def json_size_bound(message: pb.Message) -> int:
    return 6 * message.ByteSize() + 1024


async def add_within_cap(
    conn: AsyncConnection, *, tenant_id: str, room_id: str, user_id: str
) -> None:
    """AddMember's change: the room row is locked first, so concurrent adds cannot pass
    the cap together."""
    count = await repo.lock_room(conn, tenant_id=tenant_id, room_id=room_id)
    if count is None:
        raise not_found("ROOM_NOT_FOUND", "room not found")
    if await repo.add_member(conn, tenant_id=tenant_id, room_id=room_id, user_id=user_id) and (
        count >= MAX_MEMBERS
    ):
        raise conflict("ROOM_FULL", f"a room has at most {MAX_MEMBERS} members")


def _ts(value: Any) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def message_to_pb(row: Row[Any]) -> pb.Message:
    msg = pb.Message(
        id=row.id, room_id=row.room_id, sender_id=row.sender_id, created_at=_ts(row.created_at)
    )
    for part in row.parts:
        json_format.ParseDict(part, msg.parts.add())
    return msg


def _page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode()


def _parse_page_token(token: str) -> int | None:
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN:
        raise invalid("pageToken", "is not a token returned by this API")
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
        if raw.startswith("s") and 0 < (seq := int(raw[1:])) < 2**63:
            return seq
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise invalid("pageToken", "is not a token returned by this API")


def _text_parts(parts: Any) -> list[dict[str, Any]]:
    """Clients post text parts; data-call parts are written only by the call service."""
    if not 1 <= len(parts) <= MAX_PARTS:
        raise invalid("parts", f"must hold 1 to {MAX_PARTS} parts")
    out = []
    for i, part in enumerate(parts):
        if part.type != "text":
            raise invalid(f"parts[{i}].type", "must be 'text'")
        if not part.HasField("text") or not 1 <= len(part.text) <= MAX_TEXT:
            raise invalid(f"parts[{i}].text", f"must be 1 to {MAX_TEXT} characters")
        out.append({"type": "text", "text": part.text})
    return out


class ChatService(pb_grpc.ChatServiceServicer):
    def __init__(self, engine: AsyncEngine, calls: CallTransitions) -> None:
        self.engine = engine
        self.calls = calls  # a removed member leaves the room's live call

    async def _room(self, conn: AsyncConnection, tenant_id: str, room_id: str) -> pb.Room:
        row = await repo.get_room(conn, tenant_id=tenant_id, room_id=room_id)
        if row is None:
            raise not_found("ROOM_NOT_FOUND", "room not found")
        members = await room_members(conn, tenant_id=tenant_id, room_id=room_id)
        return pb.Room(id=row.id, name=row.name, members=members, created_at=_ts(row.created_at))

    async def CreateRoom(self, request: pb.CreateRoomRequest, context: Any) -> pb.Room:
        tenant_id = current_principal().tenant_id
        members = validation.user_ids(request.members, "members", most=MAX_MEMBERS)
        name = request.name if request.HasField("name") else ""
        if len(name) > MAX_NAME:
            raise invalid("name", f"must be at most {MAX_NAME} characters")
        async with transaction(self.engine) as conn:
            room_id = await repo.create_room(conn, tenant_id=tenant_id, name=name, members=members)
            return await self._room(conn, tenant_id, room_id)

    async def AddMember(self, request: pb.AddMemberRequest, context: Any) -> pb.Room:
        tenant_id = current_principal().tenant_id
        room_id = validation.resource_id(request.room_id, "roomId")
        user_id = validation.user_id(request.user_id)
        async with transaction(self.engine) as conn:
            await self._room(conn, tenant_id, room_id)  # 404 before any change
            await add_within_cap(conn, tenant_id=tenant_id, room_id=room_id, user_id=user_id)
            return await self._room(conn, tenant_id, room_id)

    async def RemoveMember(self, request: pb.RemoveMemberRequest, context: Any) -> pb.Room:
        tenant_id = current_principal().tenant_id
        room_id = validation.resource_id(request.room_id, "roomId")
        user_id = validation.user_id(request.user_id)
        async with transaction(self.engine) as conn:
            await self._room(conn, tenant_id, room_id)  # 404 before any change
            await repo.remove_member(conn, tenant_id=tenant_id, room_id=room_id, user_id=user_id)
            left = await membership.leave_live_call(
                self.calls, conn, RoomRef(tenant_id, room_id), user_id
            )
            room = await self._room(conn, tenant_id, room_id)
        if left is not None:
            self.calls.effects.after_commit(*left)
        return room

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Any
    ) -> pb.ListMessagesResponse:
        principal = current_principal()
        room_id = validation.resource_id(request.room_id, "roomId")
        page_size = validation.int_range(request.page_size or 50, "pageSize", 1, 100)
        before = _parse_page_token(request.page_token)
        async with self.engine.connect() as conn:
            if principal.kind is Kind.SESSION:
                await require_member(
                    conn,
                    tenant_id=principal.tenant_id,
                    room_id=room_id,
                    user_id=principal.require_user(),
                )
            else:
                await room_members(conn, tenant_id=principal.tenant_id, room_id=room_id)
            rows = await repo.list_messages(
                conn,
                tenant_id=principal.tenant_id,
                room_id=room_id,
                before_seq=before,
                limit=page_size + 1,
            )
        response = pb.ListMessagesResponse()
        budget = PAGE_JSON_BUDGET
        for row in rows[:page_size]:
            message = message_to_pb(row)
            budget -= json_size_bound(message)
            if budget < 0 and response.messages:
                break  # the next page starts with this message
            response.messages.append(message)
        if len(rows) > len(response.messages):
            response.next_page_token = _page_token(rows[len(response.messages) - 1].seq)
        return response

    async def PostMessage(self, request: pb.PostMessageRequest, context: Any) -> pb.Message:
        principal = current_principal()
        user_id = principal.require_user()
        room_id = validation.resource_id(request.room_id, "roomId")
        parts = _text_parts(request.parts)
        async with transaction(self.engine) as conn:
            await require_member(
                conn, tenant_id=principal.tenant_id, room_id=room_id, user_id=user_id
            )
            row = await repo.insert_message(
                conn, tenant_id=principal.tenant_id, room_id=room_id, sender_id=user_id, parts=parts
            )
        assert row is not None  # only call-history inserts can be skipped
        return message_to_pb(row)


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    # A member's removal from a room ends or changes its live call: what follows the
    # commit (metrics, LiveKit) goes the calls service's one way, with its own small pool
    # for marking deleted media rooms.
    media = Media(settings)
    pool = await open_pool(settings, max_size=2)
    effects = CallEffects(media, pool)
    servicer = ChatService(engine, CallTransitions.for_settings(pool, effects, settings))

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_ChatServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await effects.drain()
        await media.close()
        await pool.close()

    name = pb.DESCRIPTOR.services_by_name["ChatService"].full_name
    return ServiceParts(
        registrations=[Registration(add, name, POLICIES)],
        background=[effects.delete_ended_rooms],
        closers=[close],
    )
