"""Each call transition sends at most 5 SQL statements between BEGIN and COMMIT.

The transitions run in-process against the test stack's real PostgreSQL through the
same store and unit of work the service uses; every statement psycopg sends goes
through a counting cursor. A regression (a re-read after a write, one INSERT per
event, a separate NOTIFY) fails here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import AsyncConnection, AsyncCursor
from psycopg_pool import AsyncConnectionPool

from services.calls import domain, locks
from services.calls.domain import CallRef, RoomRef
from services.calls.effects import CallEffects
from services.calls.media import Media
from services.calls.transitions import CallTransitions
from services.common.db import connect_params
from services.common.errors import ServiceError
from services.common.settings import load_settings
from tests.conftest import Tenant
from tests.stack import Stack

MAX_STATEMENTS = 5
sent: list[str] = []


class CountingCursor(AsyncCursor[Any]):
    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query).split(None, 1)[0].upper())
        return await super().execute(query, *args, **kwargs)


@pytest.fixture
async def calls(stack: Stack) -> AsyncIterator[CallTransitions]:
    settings = load_settings(**{k: v for k, v in stack.env().items() if k.isupper()})
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        settings.libpq_url,
        min_size=1,
        max_size=2,
        kwargs={"autocommit": True, **connect_params(settings), "cursor_factory": CountingCursor},
        open=False,
    )
    await pool.open(wait=True)
    media = Media(settings)
    effects = CallEffects(media, pool)
    transitions = CallTransitions.for_settings(pool, effects, settings)
    try:
        yield transitions
    finally:
        await effects.drain()
        await media.close()
        await pool.close()


def start(calls: CallTransitions, tenant: Tenant, room: str, user: str) -> Any:
    return calls.start(RoomRef(tenant.tenant_id, room), user, None, None)


def accept(calls: CallTransitions, tenant: Tenant, room: str, call: str, user: str) -> Any:
    ref = CallRef(tenant.tenant_id, room, call)
    return calls.on_call(ref, user, lambda c, p, now: domain.accept(c, user, p, now))


def decline(calls: CallTransitions, tenant: Tenant, room: str, call: str, user: str) -> Any:
    return calls.on_call(
        CallRef(tenant.tenant_id, room, call), user, lambda c, _, now: domain.decline(c, user, now)
    )


def leave(calls: CallTransitions, tenant: Tenant, room: str, call: str, user: str) -> Any:
    return calls.on_call(
        CallRef(tenant.tenant_id, room, call), user, lambda c, _, now: domain.leave(c, user, now)
    )


def end(calls: CallTransitions, tenant: Tenant, room: str, call: str, user: str) -> Any:
    ref = CallRef(tenant.tenant_id, room, call)
    return calls.on_call(ref, user, lambda c, _, now: domain.end(c, user, None, now))


async def counted(step: Any) -> tuple[Any, int]:
    sent.clear()
    result = await step
    return result, len(sent)


async def test_direct_lifecycle_statement_counts(calls: CallTransitions, tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    started, n_start = await counted(start(calls, tenant, room, "alice"))
    assert started.call.status == "ringing"
    call = started.call.id
    accepted, n_accept = await counted(accept(calls, tenant, room, call, "bob"))
    assert accepted.call.status == "active"
    ended, n_end = await counted(end(calls, tenant, room, call, "alice"))
    assert ended.call.end_reason == "hangup"
    assert max(n_start, n_accept, n_end) <= MAX_STATEMENTS, (n_start, n_accept, n_end)

    again = await start(calls, tenant, room, "alice")
    declined, n_decline = await counted(decline(calls, tenant, room, again.call.id, "bob"))
    assert declined.call.end_reason == "declined"
    assert n_decline <= MAX_STATEMENTS, n_decline


async def test_glare_start_statement_count(calls: CallTransitions, tenant: Tenant) -> None:
    """The callee's start on a ringing call: the longest start (insert loses, then join)."""
    room = tenant.room("alice", "bob")
    first = await start(calls, tenant, room, "alice")
    glare, n = await counted(start(calls, tenant, room, "bob"))
    assert glare.call.id == first.call.id and glare.call.status == "active"
    assert n <= MAX_STATEMENTS, n


async def test_group_statement_counts(calls: CallTransitions, tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol", "dave")
    started, n_start = await counted(start(calls, tenant, room, "alice"))
    call = started.call.id
    _, n_accept = await counted(accept(calls, tenant, room, call, "bob"))
    _, n_rejoin = await counted(start(calls, tenant, room, "carol"))
    _, n_decline = await counted(decline(calls, tenant, room, call, "dave"))
    left, n_leave = await counted(leave(calls, tenant, room, call, "bob"))
    assert left.call.participant("bob").state == "left"
    ended, n_end = await counted(end(calls, tenant, room, call, "alice"))
    assert ended.call.status == "ended"
    counts = (n_start, n_accept, n_rejoin, n_decline, n_leave, n_end)
    assert max(counts) <= MAX_STATEMENTS, counts


async def test_ringing_statement_counts(calls: CallTransitions, tenant: Tenant) -> None:
    """A 1:1 start under the "reject" busy policy (user locks, then the busy check), a
    busy one, and ringing a group's members again."""
    tenant.patch_settings(busyPolicy="reject")
    rings, n_free = await counted(start(calls, tenant, tenant.room("alice", "bob"), "alice"))
    assert rings.call.status == "ringing"
    group_room = tenant.room("carol", "dave", "erin")
    group = await start(calls, tenant, group_room, "carol")
    await accept(calls, tenant, group_room, group.call.id, "dave")
    busy, n_busy = await counted(start(calls, tenant, tenant.room("frank", "dave"), "frank"))
    assert (busy.call.status, busy.call.end_reason) == ("ended", "busy")
    await decline(calls, tenant, group_room, group.call.id, "erin")
    _, n_ring = await counted(
        calls.ring_again(CallRef(tenant.tenant_id, group_room, group.call.id), "carol", ["erin"])
    )
    counts = (n_free, n_busy, n_ring)
    assert max(counts) <= MAX_STATEMENTS, counts


async def test_guest_statement_counts(calls: CallTransitions, tenant: Tenant) -> None:
    """A knock (the link's use, the call's lock, the write), then admit and deny."""
    tenant.patch_settings(guestsEnabled=True, lobby="host")
    room = tenant.room("alice", "bob", "carol")
    started = await start(calls, tenant, room, "alice")
    ref = CallRef(tenant.tenant_id, room, started.call.id)
    await accept(calls, tenant, room, started.call.id, "bob")
    alice = domain.Actor("alice")
    _, token = await calls.make_link(ref, alice, ttl=600, max_uses=5)
    (knocked, first, _), n_knock = await counted(calls.knock(token, "Gail"))
    assert knocked.call.participant(first).state == "waiting"
    (_, second, _) = await calls.knock(token, "Hal")
    admitted, n_admit = await counted(
        calls.on_call(ref, "alice", lambda c, p, _: domain.admit(c, alice, first, p))
    )
    assert admitted.call.participant(first).state == "invited"
    denied, n_deny = await counted(
        calls.on_call(ref, "alice", lambda c, _, __: domain.deny(c, alice, second))
    )
    assert denied.call.participant(second).state == "removed"
    counts = (n_knock, n_admit, n_deny)
    assert max(counts) <= MAX_STATEMENTS, counts


async def test_the_busy_check_waits_for_a_user_joining_elsewhere(
    calls: CallTransitions, tenant: Tenant, stack: Stack
) -> None:
    """The busy check is atomic with joins: a start under "reject" takes the callee's user
    lock before looking, so a join that holds the lock (every write making a user joined
    takes it) is seen once it commits, never missed in between."""
    tenant.patch_settings(busyPolicy="reject")
    group_room = tenant.room("carol", "bob", "dave")
    group = await start(calls, tenant, group_room, "carol")
    async with await AsyncConnection.connect(stack.database_url) as other:
        # Another transaction holds bob's user lock, as a join by bob would.
        await other.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            (locks.USER_LOCK_CLASS, locks.user_key(tenant.tenant_id, "bob")),
        )
        busy = asyncio.create_task(start(calls, tenant, tenant.room("alice", "bob"), "alice"))
        await asyncio.sleep(0.5)
        assert not busy.done()  # waiting for bob's lock, before looking
        await other.execute(
            "UPDATE call_participants SET state = 'joined' WHERE call_id = %s AND user_id = 'bob'",
            (group.call.id,),
        )
        await other.commit()
    started = await busy
    assert (started.call.status, started.call.end_reason) == ("ended", "busy")


async def test_the_counter_sees_every_statement(calls: CallTransitions, tenant: Tenant) -> None:
    """Guards the guard: a read with no live call is exactly one SELECT, and is counted."""
    room = tenant.room("alice", "bob")
    _, n = await counted(calls.active(RoomRef(tenant.tenant_id, room), "alice"))
    assert n == 1 and sent == ["SELECT"]


async def test_a_transition_that_waited_for_the_lock_sees_the_committed_state(
    calls: CallTransitions, tenant: Tenant, stack: Stack
) -> None:
    """The load reads participants in the locking statement, from a snapshot taken before
    any wait; when a transition commits meanwhile, the version check re-reads them."""
    tenant.patch_settings(maxParticipants=2)
    room = tenant.room("alice", "bob", "carol")
    call = (await start(calls, tenant, room, "alice")).call.id
    async with await AsyncConnection.connect(stack.database_url) as other:
        await other.execute("SELECT 1 FROM calls WHERE id = %s FOR UPDATE", (call,))
        waiting = asyncio.create_task(counted(accept(calls, tenant, room, call, "bob")))
        await asyncio.sleep(0.5)  # bob's accept is now blocked on the row lock
        assert not waiting.done()
        # What another transition would commit: carol joins, the version moves on.
        await other.execute(
            "UPDATE call_participants SET state = 'joined'"
            " WHERE call_id = %s AND user_id = 'carol'",
            (call,),
        )
        await other.execute("UPDATE calls SET version = version + 1 WHERE id = %s", (call,))
        await other.commit()
    with pytest.raises(ServiceError) as refused:
        await waiting
    assert refused.value.reason == "CALL_FULL"  # carol's join was seen: the cap holds


async def test_a_join_that_waited_for_the_lock_sees_a_membership_removed_meanwhile(
    calls: CallTransitions, tenant: Tenant, stack: Stack
) -> None:
    """RemoveMember deletes the membership and moves the live call's version on under
    its lock: a join waiting for that lock reads the membership again and is refused."""
    room = tenant.room("alice", "bob", "carol")
    call = (await start(calls, tenant, room, "alice")).call.id
    async with await AsyncConnection.connect(stack.database_url) as other:
        await other.execute("SELECT 1 FROM calls WHERE id = %s FOR UPDATE", (call,))
        waiting = asyncio.create_task(accept(calls, tenant, room, call, "carol"))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await other.execute(
            "DELETE FROM room_members WHERE room_id = %s AND user_id = 'carol'", (room,)
        )
        await other.execute("UPDATE calls SET version = version + 1 WHERE id = %s", (call,))
        await other.commit()
    with pytest.raises(ServiceError) as refused:
        await waiting
    assert refused.value.reason == "NOT_ROOM_MEMBER"
