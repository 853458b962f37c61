"""The unit of work around the pure call rules: load under lock → rule → render → write
→ after commit. One transaction per request; every statement is in `store.py`, what a
change writes besides the call is rendered by `writes.py`, and everything outside the
database happens after commit (`effects.py`), so a slow media server never holds a row
lock or delays the response. Lock order: `locks.py`."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sendsar.calls.v1 import calls_pb2 as pb

from services.calls import domain, locks, store, writes
from services.calls.convert import call_to_pb
from services.calls.domain import Actor, Call, CallPolicy, CallRef, Change, MuteKind, RoomRef
from services.calls.effects import CallEffects
from services.calls.media import MediaSignal
from services.common.auth import LINK_TOKEN_PREFIX, RingTokens, hash_secret
from services.common.errors import UNAVAILABLE, not_found, unauthenticated
from services.common.logging import call_id_var
from services.common.models import new_id
from services.common.rate_limit import TokenBuckets, rate_limited
from services.common.settings import Settings

EVENT_BYTES = Histogram(
    "call_event_bytes",
    "Bytes of events (outbox payloads) one call transition writes",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576),
)

# A transition's rule: the locked call, the tenant's policy and the database's time in,
# the change out (or a refusal raised).
Rule = Callable[[Call, CallPolicy, datetime], Change]


@dataclass(frozen=True)
class Applied:
    """A transition's result: the call afterwards and its protobuf, built once."""

    call: Call
    message: pb.Call


LINK_INVALID = unauthenticated(
    "this link does not work (revoked, expired, used up, or its call is over)",
    reason="LINK_INVALID",
)


def parse_link_token(token: str) -> tuple[str, str] | None:
    """(link id, secret) of a well-formed link token, else None."""
    link_id, sep, secret = token.removeprefix(LINK_TOKEN_PREFIX).rpartition("_")
    if not token.startswith(LINK_TOKEN_PREFIX) or not sep or not link_id or not secret:
        return None
    return link_id, secret


def _member(loaded: store.Loaded, user: str | None) -> bool:
    """Whether the caller may act in the room: a member, the tenant (None), or a guest
    (guests are not members; the service admits a guest's token for its own call only,
    and each rule checks the guest is that call's participant)."""
    return loaded.is_member or user is None or domain.is_guest(user)


class CallTransitions:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        effects: CallEffects,
        ring_tokens: RingTokens,
        event_bytes: TokenBuckets,
        link_knocks: tuple[float, int],
        media_grace: timedelta = timedelta(seconds=60),
    ) -> None:
        self.pool = pool
        self.effects = effects
        self.ring_tokens = ring_tokens
        self.event_bytes = event_bytes  # per tenant (services/common/rate_limit.py)
        # Per link (rate, burst): a leaked link cannot flood a host (store.REDEEM_LINK).
        self.link_knocks = link_knocks
        self.media_grace = media_grace

    @classmethod
    def for_settings(
        cls,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        effects: CallEffects,
        settings: Settings,
    ) -> CallTransitions:
        return cls(
            pool,
            effects,
            RingTokens(settings.SESSION_SIGNING_KEY),
            TokenBuckets(settings.EVENT_BYTES_PER_SECOND, settings.EVENT_BYTES_BURST),
            (settings.GUEST_KNOCKS_PER_SECOND, settings.GUEST_KNOCKS_BURST),
            timedelta(seconds=settings.CALL_MEDIA_GRACE_SECONDS),
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection[Any]]:
        # Not psycopg's pipeline mode: measured, it saves round trips but costs ~25%
        # more Python CPU per transition, and CPU is what bounds a worker.
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def save(
        self, conn: AsyncConnection[Any], before: Call | None, change: Change, now: datetime
    ) -> Applied | None:
        """Writes a change (of `before`; None: a new call) in the caller's transaction.
        None only for a new call whose room's live-call slot was taken first."""
        rendered = writes.render(before, change, now, self.sign_ring)
        if rendered.write is None:
            return Applied(change.call, rendered.message)
        self._spend(change.call.tenant_id, rendered.write, refusable=before is None)
        if not await store.write(conn, rendered.write):
            return None
        return Applied(change.call, rendered.message)

    def _spend(self, tenant: str, write: store.Write, *, refusable: bool) -> None:
        """Counts a write's event bytes against the tenant's budget: a new call over it
        is refused (429, scope "events", nothing written); anything else counts but is
        done, so a tenant's calls can always end and be answered."""
        size = sum(len(row.payload) for row in write.outbox)
        EVENT_BYTES.observe(size)
        if not refusable:
            self.event_bytes.charge(tenant, size)
        elif not self.event_bytes.take(tenant, size):
            raise rate_limited("events")

    def sign_ring(self, call: Call, user_id: str, until: datetime) -> str:
        """The ring token of an invited user: it expires with the ring."""
        return self.ring_tokens.mint(
            tenant_id=call.tenant_id,
            call_id=call.id,
            user_id=user_id,
            expires_at=int(until.timestamp()),
        )

    def policy(self, loaded: CallPolicy | None, *, enabled: bool = True) -> CallPolicy:
        """The tenant's policy (calls enabled, unless `enabled` is False) with this
        service's media grace."""
        policy = domain.require_enabled(loaded) if enabled else domain.require_tenant(loaded)
        return replace(policy, media_grace=self.media_grace)

    def _finish(self, before: Call | None, change: Change, applied: Applied) -> Applied:
        self.effects.after_commit(before, change)
        if change.refusal is not None:
            raise change.refusal
        return applied

    # --- reads ------------------------------------------------------------------------

    async def active(self, room: RoomRef, user: str) -> Applied | None:
        async with self.pool.connection() as conn:
            ctx = await store.start_context(conn, room, user, lock=False)
            domain.require_member(ctx.room_exists, ctx.is_member)
            if ctx.live_call_id is None:
                return None
            live = CallRef(room.tenant, room.room, ctx.live_call_id)
            loaded = await store.load(conn, live, user, lock=False)
        if loaded.call is None or not loaded.call.live:
            return None  # ended between the two reads
        return Applied(loaded.call, call_to_pb(loaded.call))

    async def _read(self, ref: CallRef, user: str | None) -> Call:
        """A live call of the room, read without a lock, for a room member (None: the
        tenant; a guest: of this call, as the service checked), with the tenant's calls
        enabled."""
        async with self.pool.connection() as conn:
            loaded = await store.load(conn, ref, user or "", lock=False)
        self.policy(loaded.policy)
        domain.require_member(loaded.room_exists, _member(loaded, user))
        found = domain.require_live(loaded.call)
        call_id_var.set(found.id)
        return found

    async def token_holder(self, ref: CallRef, user: str) -> Applied:
        found = domain.token_holder(await self._read(ref, user), user)
        return Applied(found, call_to_pb(found))

    async def ringing(self, *, tenant: str, user: str) -> list[Applied]:
        """The calls ringing for the user now, across rooms."""
        async with self.pool.connection() as conn:
            found = await store.calls_of_user(conn, tenant=tenant, user=user, ringing=True)
        return [Applied(call, call_to_pb(call)) for call in found]

    # --- transitions ------------------------------------------------------------------

    async def start(
        self, room: RoomRef, user: str, call_type: str | None, custom: dict[str, Any] | None
    ) -> Applied:
        # Insert-or-join, retried: the live call we collided with may end in between.
        for _ in range(5):
            async with self.transaction() as conn:
                done = await self._start(conn, room, user, call_type, custom)
            if done is not None:
                before, change, applied = done
                return self._finish(before, change, applied)
        raise UNAVAILABLE

    async def _start(
        self,
        conn: AsyncConnection[Any],
        room: RoomRef,
        user: str,
        call_type: str | None,
        custom: dict[str, Any] | None,
    ) -> tuple[Call | None, Change, Applied] | None:
        """One attempt at a start; None: try again in a new transaction."""
        ctx = await store.start_context(conn, room, user, lock=True)
        policy = self.policy(ctx.policy)
        domain.require_member(ctx.room_exists, ctx.is_member)
        if ctx.live_call_id is None:
            callee_busy, users_locked = False, False
            if len(ctx.members) == 2 and policy.busy_policy == "reject":
                callee = next(m for m in ctx.members if m != user)
                callee_busy = await store.busy(
                    conn,
                    tenant=room.tenant,
                    room=room.room,
                    callee=callee,
                    user_locks=locks.user_keys(room.tenant, ctx.members),
                )
                users_locked = True
            change = domain.new_call(
                call_id=new_id("call"),
                tenant_id=room.tenant,
                room_id=room.room,
                members=ctx.members,
                user_id=user,
                call_type=call_type,
                policy=policy,
                now=ctx.now,
                custom=custom,
                callee_busy=callee_busy,
            )
            applied = await self.save(conn, None, change, ctx.now)
            if applied is not None:
                call_id_var.set(change.call.id)
                return None, change, applied
            if users_locked:
                # Holding user locks, this transaction must not wait for a call's row
                # lock (its holder may be waiting for one of them): start over.
                return None
        loaded = await store.lock_live_call(conn, room, user)
        if loaded.call is None:
            return None
        call_id_var.set(loaded.call.id)
        domain.require_member(loaded.room_exists, loaded.is_member)
        change = domain.join_live(loaded.call, user, policy, loaded.now)
        joined = await self.save(conn, loaded.call, change, loaded.now)
        assert joined is not None  # an existing call's write always lands
        return loaded.call, change, joined

    @asynccontextmanager
    async def _locked(
        self, ref: CallRef, user: str | None, *, enabled: bool = True
    ) -> AsyncIterator[tuple[AsyncConnection[Any], Call, CallPolicy, datetime]]:
        """A transaction holding one live call's row lock, opened for a room member (None:
        the tenant; `enabled` False: even while the tenant's calls are disabled): the
        connection, the call, the tenant's policy and the time."""
        async with self.transaction() as conn:
            loaded = await store.load(conn, ref, user or "", lock=True)
            policy = self.policy(loaded.policy, enabled=enabled)
            domain.require_member(loaded.room_exists, _member(loaded, user))
            before = domain.require_live(loaded.call)
            call_id_var.set(before.id)
            yield conn, before, policy, loaded.now

    async def _changed(
        self, conn: AsyncConnection[Any], before: Call, change: Change, now: datetime
    ) -> Applied:
        applied = await self.save(conn, before, change, now)
        assert applied is not None  # an existing call's write always lands
        return applied

    async def on_call(
        self, ref: CallRef, user: str | None, rule: Rule, *, enabled: bool = True
    ) -> Applied:
        """A transition of one live call by one room member (None: by the tenant):
        accept, decline, end, leave, remove. `enabled` False: allowed while the tenant's
        calls are disabled (the tenant ending a call)."""
        async with self._locked(ref, user, enabled=enabled) as (conn, before, policy, now):
            change = rule(before, policy, now)
            applied = await self._changed(conn, before, change, now)
        return self._finish(before, change, applied)

    async def ring_again(self, ref: CallRef, user: str, targets: list[str]) -> Applied:
        async with self._locked(ref, user) as (conn, before, _, now):
            # Read after the call's lock, like the caller's own membership.
            members = await store.members_among(conn, ref.room, targets)
            change = domain.ring_again(before, user, targets, members, now)
            applied = await self._changed(conn, before, change, now)
        return self._finish(before, change, applied)

    async def mute(self, ref: CallRef, actor: Actor, target: str, kind: MuteKind) -> Applied:
        """Mutes a participant's tracks of a kind: kept with the participant (a new media
        connection or a refreshed token stays muted), then taken away in LiveKit after
        commit; UNAVAILABLE when LiveKit cannot do it now (the mute stands: a retry, or
        the participant's next connection, applies it)."""
        applied = await self.on_call(
            ref, actor.user_id, lambda call, _, __: domain.mute(call, actor, target, kind)
        )
        await self.effects.media.mute(applied.call.livekit_room, target, applied.call.muted(target))
        return applied

    # --- guests and the lobby -----------------------------------------------------------

    async def make_link(
        self, ref: CallRef, actor: Actor, *, ttl: int, max_uses: int
    ) -> tuple[store.Link, str]:
        """A link to the call for guests, and its token (`gl_<link id>_<secret>`, only
        its hash is kept), made under the call's lock while the call is live."""
        async with self._locked(ref, actor.user_id) as (conn, call, policy, _):
            domain.require_guests(policy)
            domain.require_link_maker(call, actor)
            link_id, secret = new_id("link"), secrets.token_hex(32)
            link = await store.insert_link(
                conn,
                link=link_id,
                call=call,
                secret_hash=hash_secret(secret),
                created_by=actor.user_id,
                ttl=ttl,
                max_uses=max_uses,
            )
        return link, f"{LINK_TOKEN_PREFIX}{link_id}_{secret}"

    async def links(self, ref: CallRef, actor: Actor) -> list[store.Link]:
        call = await self._read(ref, actor.user_id)
        domain.require_link_maker(call, actor)
        async with self.pool.connection() as conn:
            return await store.live_links(conn, call.id)

    async def revoke_link(self, ref: CallRef, actor: Actor, link_id: str) -> None:
        call = await self._read(ref, actor.user_id)
        domain.require_link_maker(call, actor)
        async with self.pool.connection() as conn:
            if not await store.revoke_link(conn, call_id=call.id, link=link_id):
                raise not_found("LINK_NOT_FOUND", "this call has no such link")

    async def knock(self, link_token: str, name: str) -> tuple[Applied, str, datetime]:
        """A guest redeems a link: one use of it, counted in the transaction that adds the
        guest to the call (a knock refused later counts no use). The guest's id, and when
        the link expires (the guest session's end)."""
        parsed = parse_link_token(link_token)
        if parsed is None:
            raise LINK_INVALID
        link_id, secret = parsed
        guest = domain.guest_user_id(new_id("gst"))
        rate, burst = self.link_knocks
        async with self.transaction() as conn:
            link = await store.redeem_link(
                conn, link=link_id, secret_hash=hash_secret(secret), rate=rate, burst=burst
            )
            if link is None:
                raise LINK_INVALID
            if not link.allowed:
                raise rate_limited("link")
            ref = CallRef(link.tenant_id, link.room_id, link.call_id)
            loaded = await store.load(conn, ref, "", lock=True)
            if loaded.call is None or not loaded.call.live:
                raise LINK_INVALID  # a link dies with its call
            call_id_var.set(loaded.call.id)
            change = domain.knock(loaded.call, guest, name, self.policy(loaded.policy))
            applied = await self._changed(conn, loaded.call, change, loaded.now)
        return self._finish(loaded.call, change, applied), guest, link.expires_at

    # --- driven by LiveKit and by room membership ------------------------------------

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
            await self._changed(conn, call, change, now)
        self.effects.after_commit(call, change)

    async def member_removed(
        self, conn: AsyncConnection[Any], room: RoomRef, user: str
    ) -> tuple[Call, Change] | None:
        """Takes `user` out of the room's live call, if any, under its row lock, in the
        caller's transaction (services/calls/membership.py); the caller runs
        `effects.after_commit` once it committed."""
        loaded = await store.lock_live_call(conn, room, user)
        if loaded.call is None:
            return None
        change = domain.member_removed(loaded.call, user, loaded.now)
        if change.events:
            await self._changed(conn, loaded.call, change, loaded.now)
        else:  # not a participant: nothing to change but the version
            await store.bump(conn, loaded.call.id)
        return loaded.call, change
