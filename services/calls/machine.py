"""The call state machine. Each transition is one transaction that locks the call row
(or wins the room's live-call unique index), changes state with plain UPDATEs, writes
the events to the outbox and, when the call ends, its history message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.calls import history, store
from services.calls.media import Media, room_name
from services.calls.outbox import emit
from services.calls.store import Snapshot
from services.common.db import transaction
from services.common.errors import (
    UNAVAILABLE,
    ServiceError,
    conflict,
    forbidden,
    invalid,
    not_found,
)
from services.common.logging import call_id_var, log_fields
from services.common.models import CALLS, TENANTS, new_id
from services.common.rooms import room_members
from services.events import types as events

log = logging.getLogger(__name__)

END_REASONS = ("cancelled", "no_answer")
RING_TIMEOUT_REASON = "timeout"

AfterCommit = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Result:
    snap: Snapshot
    after_commit: list[AfterCommit] = field(default_factory=list)
    # Raised to the caller after the transaction commits (the state change stands).
    refusal: ServiceError | None = None


def _ended(call: Row[Any]) -> None:
    if call.status == "ended":
        raise conflict("CALL_ENDED", "the call has ended")


class CallMachine:
    def __init__(self, engine: AsyncEngine, media: Media) -> None:
        self.engine = engine
        self.media = media
        self._tasks: set[asyncio.Task[None]] = set()

    # --- plumbing -----------------------------------------------------------

    async def _commit(
        self, body: Callable[[AsyncConnection], Awaitable[Result | None]]
    ) -> Result | None:
        async with transaction(self.engine) as conn:
            result = await body(conn)
        for job in result.after_commit if result else ():  # never delays the response
            task = asyncio.create_task(job())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return result

    async def _run(self, body: Callable[[AsyncConnection], Awaitable[Result]]) -> Snapshot:
        result = await self._commit(body)
        assert result is not None
        if result.refusal is not None:
            raise result.refusal
        return result.snap

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _calls_settings(self, conn: AsyncConnection, tenant_id: str) -> Row[Any]:
        row = (
            await conn.execute(
                select(
                    TENANTS.c.calls_enabled,
                    TENANTS.c.max_participants,
                    TENANTS.c.ring_timeout_seconds,
                    TENANTS.c.default_type,
                ).where(TENANTS.c.id == tenant_id)
            )
        ).first()
        if row is None or not row.calls_enabled:
            raise forbidden("CALLS_DISABLED", "calls are disabled for this account")
        return row

    async def _member_room(
        self, conn: AsyncConnection, tenant_id: str, room_id: str, user_id: str
    ) -> list[str]:
        members = await room_members(conn, tenant_id=tenant_id, room_id=room_id)
        if user_id not in members:
            raise forbidden("NOT_ROOM_MEMBER", "you are not a member of this room")
        return members

    async def _open_live(
        self, conn: AsyncConnection, tenant_id: str, room_id: str, call_id: str, user_id: str
    ) -> tuple[Row[Any], Snapshot]:
        """The common opening of a transition on a call: enabled, member, locked, not ended."""
        cfg = await self._calls_settings(conn, tenant_id)
        await self._member_room(conn, tenant_id, room_id, user_id)
        snap = await self._locked(conn, tenant_id, room_id, call_id)
        _ended(snap.call)
        return cfg, snap

    async def _locked(
        self, conn: AsyncConnection, tenant_id: str, room_id: str, call_id: str
    ) -> Snapshot:
        call = await store.lock_call(conn, tenant_id=tenant_id, room_id=room_id, call_id=call_id)
        if call is None:
            raise not_found("CALL_NOT_FOUND", "call not found in this room")
        call_id_var.set(call.id)
        return await store.snapshot(conn, call.id)

    # --- queries ------------------------------------------------------------

    async def active(self, *, tenant_id: str, room_id: str, user_id: str) -> Snapshot | None:
        async with self.engine.connect() as conn:
            await self._member_room(conn, tenant_id, room_id, user_id)
            call_id = await store.live_call_id(conn, tenant_id=tenant_id, room_id=room_id)
            return await store.snapshot(conn, call_id) if call_id else None

    # --- transitions ----------------------------------------------------------

    async def start(
        self, *, tenant_id: str, room_id: str, user_id: str, call_type: str | None
    ) -> Snapshot:
        async def body(conn: AsyncConnection) -> Result:
            cfg = await self._calls_settings(conn, tenant_id)
            members = await self._member_room(conn, tenant_id, room_id, user_id)
            if len(members) < 2:
                raise conflict("ROOM_TOO_SMALL", "a call needs a room with at least two members")
            direct = len(members) == 2
            # Insert-or-join, retried: the live call we collided with may end in between.
            for _ in range(5):
                call_id = new_id("call")
                inserted = await store.insert_live_call(
                    conn,
                    {
                        "id": call_id,
                        "tenant_id": tenant_id,
                        "room_id": room_id,
                        "type": call_type or cfg.default_type,
                        "mode": "direct" if direct else "group",
                        "status": "ringing" if direct else "active",
                        "created_by": user_id,
                        "ring_timeout_seconds": cfg.ring_timeout_seconds,
                        "ring_deadline": (
                            func.now()
                            + func.make_interval(0, 0, 0, 0, 0, 0, cfg.ring_timeout_seconds)
                            if direct
                            else None
                        ),
                        "livekit_room": room_name(call_id),
                    },
                )
                if inserted:
                    call_id_var.set(call_id)
                    others = [m for m in members if m != user_id]
                    await store.add_participants(
                        conn, tenant_id=tenant_id, call_id=call_id, joined=[user_id], invited=others
                    )
                    snap = await store.snapshot(conn, call_id)
                    await emit(conn, snap, events.STARTED, user_id=user_id, recipients=())
                    await emit(conn, snap, events.INVITE, user_id=user_id, recipients=others)
                    return Result(snap)
                live = await store.lock_live_call(conn, tenant_id=tenant_id, room_id=room_id)
                if live is not None:
                    call_id_var.set(live.id)
                    return await self._join_live(
                        conn, await store.snapshot(conn, live.id), user_id, cfg
                    )
            raise UNAVAILABLE

        return await self._run(body)

    async def _join_live(
        self, conn: AsyncConnection, snap: Snapshot, user_id: str, cfg: Row[Any]
    ) -> Result:
        """Start in a room with a live call: rejoin it, or accept it as the callee (glare)."""
        call = snap.call
        if call.mode == "direct" and call.status == "ringing":
            if user_id == call.created_by:
                return Result(snap)  # the caller's other device
            return await self._answer(conn, snap, user_id)
        return await self._join(conn, snap, user_id, cfg)

    async def _answer(self, conn: AsyncConnection, snap: Snapshot, user_id: str) -> Result:
        if snap.participant(user_id) is None:  # e.g. added to the room while it rang
            raise forbidden("NOT_CALL_PARTICIPANT", "this 1:1 call is between two other users")
        expired = (
            await conn.execute(
                select(CALLS.c.ring_deadline <= func.now()).where(CALLS.c.id == snap.call.id)
            )
        ).scalar()
        if expired:  # the sweep has not reached it yet: too late all the same
            result = await self._finish(
                conn, snap.call, reason=RING_TIMEOUT_REASON, actor=snap.call.created_by
            )
            result.refusal = conflict("CALL_ENDED", "the call has ended")
            return result
        await store.update_call(
            conn, snap.call.id, status="active", answered_at=func.now(), ring_deadline=None
        )
        await store.set_joined(
            conn, tenant_id=snap.call.tenant_id, call_id=snap.call.id, user_id=user_id
        )
        snap = await store.snapshot(conn, snap.call.id)
        await emit(conn, snap, events.ACCEPTED, user_id=user_id, recipients=snap.user_ids())
        return Result(snap)

    async def _join(
        self, conn: AsyncConnection, snap: Snapshot, user_id: str, cfg: Row[Any]
    ) -> Result:
        call = snap.call
        participant = snap.participant(user_id)
        if participant is not None and participant.state == "joined":
            return Result(snap)  # idempotent: another device, or a retry
        if call.mode == "direct" and participant is None:
            raise forbidden("NOT_CALL_PARTICIPANT", "this 1:1 call is between two other users")
        if len(snap.joined()) >= cfg.max_participants:
            raise conflict(
                "CALL_FULL", f"the call has reached its {cfg.max_participants} participants"
            )
        await store.set_joined(conn, tenant_id=call.tenant_id, call_id=call.id, user_id=user_id)
        if call.answered_at is None and user_id != call.created_by:
            await store.update_call(conn, call.id, answered_at=func.now())
        snap = await store.snapshot(conn, call.id)
        await emit(
            conn, snap, events.PARTICIPANT_JOINED, user_id=user_id, recipients=snap.user_ids()
        )
        return Result(snap)

    async def accept(self, *, tenant_id: str, room_id: str, call_id: str, user_id: str) -> Snapshot:
        async def body(conn: AsyncConnection) -> Result:
            cfg, snap = await self._open_live(conn, tenant_id, room_id, call_id, user_id)
            if snap.call.mode == "direct":
                if user_id == snap.call.created_by:
                    raise conflict("CANNOT_ACCEPT_OWN_CALL", "you started this call")
                if snap.call.status == "ringing":
                    return await self._answer(conn, snap, user_id)
            return await self._join(conn, snap, user_id, cfg)

        return await self._run(body)

    async def decline(
        self, *, tenant_id: str, room_id: str, call_id: str, user_id: str
    ) -> Snapshot:
        async def body(conn: AsyncConnection) -> Result:
            _, snap = await self._open_live(conn, tenant_id, room_id, call_id, user_id)
            participant = snap.participant(user_id)
            if snap.call.mode == "direct":
                if user_id == snap.call.created_by:
                    raise conflict(
                        "CANNOT_DECLINE_OWN_CALL",
                        "you started this call; end it with reason 'cancelled'",
                    )
                if participant is None:
                    raise forbidden(
                        "NOT_CALL_PARTICIPANT", "this 1:1 call is between two other users"
                    )
                if snap.call.status != "ringing":
                    raise conflict(
                        "CALL_NOT_RINGING", "the call was already answered; end it instead"
                    )
                await store.set_state(conn, call_id=call_id, user_id=user_id, state="declined")
                return await self._finish(conn, snap.call, reason="declined", actor=user_id)
            # Group: only this user's invitation; their other devices stop ringing.
            if participant is not None and participant.state == "joined":
                raise conflict("ALREADY_JOINED", "you are in this call; leave it instead")
            if participant is not None:
                await store.set_state(conn, call_id=call_id, user_id=user_id, state="declined")
            snap = await store.snapshot(conn, call_id)
            await emit(conn, snap, events.DECLINED, user_id=user_id, recipients=[user_id])
            return Result(snap)

        return await self._run(body)

    async def end(
        self, *, tenant_id: str, room_id: str, call_id: str, user_id: str, reason: str | None
    ) -> Snapshot:
        if reason is not None and reason not in END_REASONS:
            raise invalid(
                "reason", "must be 'cancelled' or 'no_answer'", reason="INVALID_END_REASON"
            )

        async def body(conn: AsyncConnection) -> Result:
            _, snap = await self._open_live(conn, tenant_id, room_id, call_id, user_id)
            call = snap.call
            if call.mode == "group":
                if user_id != call.created_by:
                    raise forbidden(
                        "NOT_CALL_CREATOR",
                        "only the call's creator can end it for everyone; use leave",
                    )
                return await self._finish(conn, call, reason="hangup", actor=user_id)
            if snap.participant(user_id) is None:
                raise forbidden("NOT_CALL_PARTICIPANT", "you are not in this call")
            if call.status == "ringing":
                if user_id != call.created_by:  # the callee hanging up a ringing call declines it
                    await store.set_state(conn, call_id=call_id, user_id=user_id, state="declined")
                    return await self._finish(conn, call, reason="declined", actor=user_id)
                return await self._finish(conn, call, reason=reason or "cancelled", actor=user_id)
            return await self._finish(conn, call, reason="hangup", actor=user_id)

        return await self._run(body)

    async def leave(self, *, tenant_id: str, room_id: str, call_id: str, user_id: str) -> Snapshot:
        async def body(conn: AsyncConnection) -> Result:
            _, snap = await self._open_live(conn, tenant_id, room_id, call_id, user_id)
            participant = snap.participant(user_id)
            if participant is None or participant.state != "joined":
                raise conflict("NOT_IN_CALL", "you have not joined this call")
            return await self._leave(conn, snap, user_id)

        return await self._run(body)

    async def _leave(self, conn: AsyncConnection, snap: Snapshot, user_id: str) -> Result:
        call = snap.call
        if call.mode == "direct":  # a 1:1 call cannot go on with one side gone
            reason = "cancelled" if call.status == "ringing" else "hangup"
            return await self._finish(conn, call, reason=reason, actor=user_id)
        await store.set_state(conn, call_id=call.id, user_id=user_id, state="left")
        snap = await store.snapshot(conn, call.id)
        await emit(conn, snap, events.PARTICIPANT_LEFT, user_id=user_id, recipients=snap.user_ids())
        if not snap.joined():
            return await self._finish(conn, call, reason="all_left", actor=user_id)

        async def kick() -> None:
            await self.media.remove_participant(call.livekit_room, user_id)

        return Result(snap, [kick])

    async def token_check(
        self, *, tenant_id: str, room_id: str, call_id: str, user_id: str
    ) -> Snapshot:
        async with self.engine.connect() as conn:
            await self._calls_settings(conn, tenant_id)
            await self._member_room(conn, tenant_id, room_id, user_id)
            call_exists = (
                await conn.execute(
                    select(CALLS.c.id).where(
                        CALLS.c.id == call_id,
                        CALLS.c.room_id == room_id,
                        CALLS.c.tenant_id == tenant_id,
                    )
                )
            ).scalar()
            if call_exists is None:
                raise not_found("CALL_NOT_FOUND", "call not found in this room")
            snap = await store.snapshot(conn, call_id)
        _ended(snap.call)
        participant = snap.participant(user_id)
        if participant is None or participant.state != "joined":
            raise forbidden(
                "NOT_CALL_PARTICIPANT", "only a current participant can get a media token"
            )
        return snap

    async def _finish(
        self, conn: AsyncConnection, call: Row[Any], *, reason: str, actor: str
    ) -> Result:
        await conn.execute(
            update(CALLS)
            .where(CALLS.c.id == call.id, CALLS.c.status != "ended")
            .values(
                status="ended",
                ended_at=func.now(),
                end_reason=reason,
                ring_deadline=None,
                livekit_cleanup_pending=True,
            )
        )
        await store.leave_all(conn, call_id=call.id)
        snap = await store.snapshot(conn, call.id)
        await history.write(conn, snap)
        everyone = snap.user_ids()
        if reason == "declined":
            await emit(conn, snap, events.DECLINED, user_id=actor, recipients=everyone)
        if history.outcome(snap) == history.MISSED:
            await emit(conn, snap, events.MISSED, user_id=actor, recipients=everyone)
        await emit(conn, snap, events.ENDED, user_id=actor, recipients=everyone)
        log.info("call ended", extra=log_fields(callId=call.id, reason=reason))

        async def remove_media_room() -> None:
            if await self.media.delete_room(call.livekit_room):
                async with transaction(self.engine) as c:
                    await store.update_call(c, call.id, livekit_cleanup_pending=False)

        return Result(snap, [remove_media_room])

    # --- background sweeps -----------------------------------------------------

    async def expire_ringing(self, limit: int = 50) -> int:
        """Ends ringing calls past their deadline; each exactly once across replicas."""
        count = 0

        async def body(conn: AsyncConnection) -> Result | None:
            nonlocal count
            jobs: list[AfterCommit] = []
            snap = None
            for call in await store.lock_due_ringing(conn, limit):
                result = await self._finish(
                    conn, call, reason=RING_TIMEOUT_REASON, actor=call.created_by
                )
                jobs.extend(result.after_commit)
                snap, count = result.snap, count + 1
            return Result(snap, jobs) if snap is not None else None

        await self._commit(body)
        return count

    async def clean_media_rooms(self, limit: int = 20) -> None:
        """Retries LiveKit room deletion for ended calls until LiveKit confirms."""
        async with transaction(self.engine) as conn:
            for row in await store.lock_pending_cleanups(conn, limit):
                if not await self.media.delete_room(row.livekit_room):
                    return  # LiveKit unreachable: try again on the next sweep
                await store.update_call(conn, row.id, livekit_cleanup_pending=False)

    # --- LiveKit webhooks --------------------------------------------------------

    async def media_event(
        self, kind: str, livekit_room: str, identity: str, session_started_ms: int
    ) -> None:
        """Participant state follows the media room; the last one out (or room_finished) ends it."""

        async def body(conn: AsyncConnection) -> Result | None:
            call = await store.lock_call_by_livekit_room(conn, livekit_room)
            if call is None:
                return None
            call_id_var.set(call.id)
            if kind == "room_finished":
                await store.update_call(conn, call.id, livekit_cleanup_pending=False)
                if call.status == "ended":
                    return None
                result = await self._finish(conn, call, reason="media_ended", actor=call.created_by)
                result.after_commit.clear()  # the media room is already gone
                return result
            if call.status == "ended":
                return None
            snap = await store.snapshot(conn, call.id)
            participant = snap.participant(identity)
            if participant is None:
                return None
            if kind == "participant_left" and participant.state == "joined":
                # A media session that began before the user's latest join is an old one
                # (a late or redelivered webhook): its end says nothing about the new one.
                began = (
                    datetime.fromtimestamp(session_started_ms / 1000, UTC)
                    if session_started_ms
                    else None
                )
                if (
                    began is not None
                    and participant.joined_at is not None
                    and began < participant.joined_at
                ):
                    return None
                return await self._leave(conn, snap, identity)
            return None

        await self._commit(body)
