"""The unit of work around the pure call rules: load under lock → apply → save → after
commit. One transaction per request; LiveKit is only ever called after commit, so a
slow media server never holds a row lock or delays the response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sendsar.calls.v1 import calls_pb2 as pb

from services.calls import domain, metrics, store
from services.calls.convert import call_to_pb
from services.calls.domain import Actor, Call, CallPolicy, Change
from services.calls.media import Media, MediaSignal
from services.common.auth import RingTokens
from services.common.errors import UNAVAILABLE
from services.common.logging import call_id_var
from services.common.models import new_id

Rule = Callable[[Call, CallPolicy, datetime], Change]


@dataclass(frozen=True)
class Applied:
    """A transition's result: the call afterwards and its protobuf, built once."""

    call: Call
    message: pb.Call


class CallTransitions:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        media: Media,
        ring_tokens: RingTokens,
        media_grace: timedelta = timedelta(seconds=60),
    ) -> None:
        self.pool = pool
        self.media = media
        self.ring_tokens = ring_tokens
        self.media_grace = media_grace
        self._jobs: set[asyncio.Task[None]] = set()
        # Ended calls whose LiveKit room is to go (call id, room): only those LiveKit told
        # us of a room for (Change.delete_room). sweeps.remove_ended_rooms deletes them in
        # batches. Durable all the same: the rows stay marked until done.
        self.ended_rooms: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        # Not psycopg's pipeline mode: measured, it saves round trips but costs ~25%
        # more Python CPU per transition, and CPU is what bounds a worker.
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def save(
        self, conn: AsyncConnection[Any], before: Call, change: Change, now: datetime
    ) -> Applied:
        message = call_to_pb(change.call)
        await store.save(conn, before, change, message, now, self.sign_ring)
        return Applied(change.call, message)

    def sign_ring(self, call: Call, user_id: str, until: datetime) -> str:
        """The ring token of an invited user: it expires with the ring."""
        return self.ring_tokens.mint(
            tenant_id=call.tenant_id,
            call_id=call.id,
            user_id=user_id,
            expires_at=int(until.timestamp()),
        )

    def policy(self, loaded: CallPolicy | None) -> CallPolicy:
        """The tenant's policy (calls enabled) with this service's media grace."""
        return replace(domain.require_enabled(loaded), media_grace=self.media_grace)

    def after_commit(self, before: Call | None, change: Change) -> None:
        """LiveKit work of a committed change, in the background (never delays the reply).

        No media room is created when a call becomes active: LiveKit creates it at the
        first join, and a call nobody joins ends by its own no-media clock. Creating it
        up front cost a RoomService call and two LiveKit webhooks per call for nothing.
        Likewise only a call whose room LiveKit told us of has one to delete at its end:
        deleting the others cost a RoomService call and a transaction per call."""
        metrics.count(before, change)
        call = change.call
        if change.delete_room:
            self.ended_rooms.put_nowait((call.id, call.livekit_room))
        for user_id in change.kicked:
            self._spawn(self.media.remove_participant(call.livekit_room, user_id))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def drain(self) -> None:
        if self._jobs:
            await asyncio.wait(self._jobs, timeout=5)

    def _finish(self, before: Call | None, change: Change, applied: Applied) -> Applied:
        self.after_commit(before, change)
        if change.refusal is not None:
            raise change.refusal
        return applied

    # --- reads ------------------------------------------------------------------------

    async def active(self, *, tenant: str, room: str, user: str) -> Applied | None:
        async with self.pool.connection() as conn:
            ctx = await store.start_context(conn, tenant=tenant, room=room, user=user, lock=False)
            domain.require_member(ctx.room_exists, ctx.is_member)
            if ctx.live_call_id is None:
                return None
            loaded = await store.load_for_update(
                conn, tenant=tenant, room=room, call=ctx.live_call_id, user=user, lock=False
            )
        if loaded.call is None or not loaded.call.live:
            return None  # ended between the two reads
        return Applied(loaded.call, call_to_pb(loaded.call))

    async def token_holder(self, *, tenant: str, room: str, call: str, user: str) -> Applied:
        async with self.pool.connection() as conn:
            loaded = await store.load_for_update(
                conn, tenant=tenant, room=room, call=call, user=user, lock=False
            )
        self.policy(loaded.policy)
        domain.require_member(loaded.room_exists, loaded.is_member)
        found = domain.token_holder(domain.require_live(loaded.call), user)
        call_id_var.set(found.id)
        return Applied(found, call_to_pb(found))

    async def ringing(self, *, tenant: str, user: str) -> list[Applied]:
        """The calls ringing for the user now, across rooms."""
        async with self.pool.connection() as conn:
            found = await store.calls_of_user(conn, tenant=tenant, user=user, ringing=True)
        return [Applied(call, call_to_pb(call)) for call in found]

    # --- transitions ------------------------------------------------------------------

    async def start(
        self,
        *,
        tenant: str,
        room: str,
        user: str,
        call_type: str | None,
        custom: dict[str, Any] | None = None,
    ) -> Applied:
        # Insert-or-join, retried: the live call we collided with may end in between.
        for _ in range(5):
            async with self.transaction() as conn:
                done = await self._start(conn, tenant, room, user, call_type, custom)
            if done is not None:
                before, change, applied = done
                return self._finish(before, change, applied)
        raise UNAVAILABLE

    async def _start(
        self,
        conn: AsyncConnection[Any],
        tenant: str,
        room: str,
        user: str,
        call_type: str | None,
        custom: dict[str, Any] | None,
    ) -> tuple[Call | None, Change, Applied] | None:
        """One attempt at a start; None: try again in a new transaction."""
        ctx = await store.start_context(conn, tenant=tenant, room=room, user=user)
        policy = self.policy(ctx.policy)
        domain.require_member(ctx.room_exists, ctx.is_member)
        if ctx.live_call_id is None:
            callee_busy, users_locked = False, False
            if len(ctx.members) == 2 and policy.busy_policy == "reject":
                callee = next(m for m in ctx.members if m != user)
                callee_busy = await store.busy(
                    conn, tenant=tenant, room=room, caller=user, callee=callee
                )
                users_locked = True
            change = domain.new_call(
                call_id=new_id("call"),
                tenant_id=tenant,
                room_id=room,
                members=ctx.members,
                user_id=user,
                call_type=call_type,
                policy=policy,
                now=ctx.now,
                custom=custom,
                callee_busy=callee_busy,
            )
            message = call_to_pb(change.call)
            if await store.insert_call(conn, change, message, ctx.now, self.sign_ring):
                call_id_var.set(change.call.id)
                return None, change, Applied(change.call, message)
            if users_locked:
                # Holding user locks, this transaction must not wait for a call's row
                # lock (its holder may be waiting for one of them): start over.
                return None
        loaded = await store.lock_live_call(conn, tenant=tenant, room=room, user=user)
        if loaded.call is None:
            return None
        call_id_var.set(loaded.call.id)
        domain.require_member(loaded.room_exists, loaded.is_member)
        change = domain.join_live(loaded.call, user, policy, loaded.now)
        applied = await self.save(conn, loaded.call, change, loaded.now)
        return loaded.call, change, applied

    @asynccontextmanager
    async def _locked(
        self, *, tenant: str, room: str, call: str, user: str | None
    ) -> AsyncIterator[tuple[AsyncConnection[Any], Call, CallPolicy, datetime]]:
        """A transaction holding one live call's row lock, opened for a room member (None:
        the tenant): the connection, the call, the tenant's policy and the time."""
        async with self.transaction() as conn:
            loaded = await store.load_for_update(
                conn, tenant=tenant, room=room, call=call, user=user or ""
            )
            policy = self.policy(loaded.policy)
            domain.require_member(loaded.room_exists, loaded.is_member or user is None)
            before = domain.require_live(loaded.call)
            call_id_var.set(before.id)
            yield conn, before, policy, loaded.now

    async def _on_call(
        self, *, tenant: str, room: str, call: str, user: str | None, rule: Rule
    ) -> Applied:
        """A transition of one live call by one room member (None: by the tenant)."""
        locked = self._locked(tenant=tenant, room=room, call=call, user=user)
        async with locked as (conn, before, policy, now):
            change = rule(before, policy, now)
            applied = await self.save(conn, before, change, now)
        return self._finish(before, change, applied)

    async def accept(self, *, tenant: str, room: str, call: str, user: str) -> Applied:
        return await self._on_call(
            tenant=tenant,
            room=room,
            call=call,
            user=user,
            rule=lambda c, policy, now: domain.accept(c, user, policy, now),
        )

    async def decline(self, *, tenant: str, room: str, call: str, user: str) -> Applied:
        return await self._on_call(
            tenant=tenant,
            room=room,
            call=call,
            user=user,
            rule=lambda c, _, now: domain.decline(c, user, now),
        )

    async def end(
        self, *, tenant: str, room: str, call: str, user: str, reason: str | None
    ) -> Applied:
        reason = domain.end_reason(reason)
        return await self._on_call(
            tenant=tenant,
            room=room,
            call=call,
            user=user,
            rule=lambda c, _, now: domain.end(c, user, reason, now),
        )

    async def leave(self, *, tenant: str, room: str, call: str, user: str) -> Applied:
        return await self._on_call(
            tenant=tenant,
            room=room,
            call=call,
            user=user,
            rule=lambda c, _, now: domain.leave(c, user, now),
        )

    async def ring_again(
        self, *, tenant: str, room: str, call: str, user: str, targets: list[str]
    ) -> Applied:
        locked = self._locked(tenant=tenant, room=room, call=call, user=user)
        async with locked as (conn, before, _, now):
            # Read after the call's lock, like the caller's own membership.
            members = await store.members_among(conn, room, targets)
            change = domain.ring_again(before, user, targets, members, now)
            applied = await self.save(conn, before, change, now)
        return self._finish(before, change, applied)

    # --- moderation ---------------------------------------------------------------------

    async def end_by_host(self, *, tenant: str, room: str, call: str) -> Applied:
        return await self._on_call(
            tenant=tenant,
            room=room,
            call=call,
            user=None,
            rule=lambda c, _, now: domain.end_by_host(c, now),
        )

    async def remove(
        self, *, tenant: str, room: str, call: str, actor: Actor, target: str
    ) -> Applied:
        return await self._on_call(
            tenant=tenant,
            room=room,
            call=call,
            user=actor.user_id,
            rule=lambda c, _, now: domain.remove(c, actor, target, now),
        )

    async def mute(
        self, *, tenant: str, room: str, call: str, actor: Actor, target: str, kind: str
    ) -> Applied:
        """Mutes a participant's tracks of a kind in LiveKit (no state of ours changes)."""
        async with self.pool.connection() as conn:
            loaded = await store.load_for_update(
                conn, tenant=tenant, room=room, call=call, user=actor.user_id or "", lock=False
            )
        self.policy(loaded.policy)
        domain.require_member(loaded.room_exists, loaded.is_member or actor.host)
        found = domain.require_live(loaded.call)
        domain.mute_target(found, actor, target)
        await self.media.mute(found.livekit_room, target, kind)
        return Applied(found, call_to_pb(found))

    # --- driven by LiveKit ---------------------------------------------------------------

    async def media_signal(self, signal: MediaSignal) -> None:
        """Participant state follows the media room; the last one out (or room_finished)
        ends it. A room LiveKit reports for a call is deleted when the call ends, or at
        once when it has ended already."""
        async with self.transaction() as conn:
            now, call = await store.lock_by_media_room(conn, signal.livekit_room)
            if call is None:
                return
            call_id_var.set(call.id)
            if signal.kind == "room_finished":
                change = domain.media_ended(call, now)
            elif signal.kind == "joined":
                change = domain.media_joined(call, signal.identity)
            else:
                change = domain.media_left(call, signal.identity, signal.session_started, now)
            await self.save(conn, call, change, now)
        self.after_commit(call, change)
