"""The call path's lock order (services/calls/locks.py) holds: transitions that take the
same locks run in pairs, through REST, and never deadlock.

A deadlock needs two transactions to interleave within microseconds, which requests
rarely do by chance. So each round lines the pair up: another transaction holds every
lock the pair takes, both requests queue behind it, and it lets go of all of them at
once. Two transactions that take two locks in opposite orders then each get their first
lock and wait for the other's, and PostgreSQL breaks the deadlock by failing one of them
(after its `deadlock_timeout`): a request that failed where every one should have
succeeded or been refused by a rule. (Taking the user locks caller first instead of in
key order fails the first test in every round.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import psycopg
import pytest

from services.calls import locks
from tests.conftest import Tenant
from tests.stack import Stack

ROUNDS = 4
# What a request of a pair may answer: done, or refused by a rule (never a failure).
RULED = {200, 403, 404, 409}


@pytest.fixture
async def clients(tenant: Tenant) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    made = {
        user: httpx.AsyncClient(
            base_url=tenant.rest,
            headers={"Authorization": f"Bearer {tenant.session_token(user)}"},
            timeout=30,
        )
        for user in ("alice", "bob", "carol")
    }
    made["api"] = httpx.AsyncClient(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=30
    )
    try:
        yield made
    finally:
        for client in made.values():
            await client.aclose()


def ok(*replies: httpx.Response) -> None:
    failed = [(r.status_code, r.text) for r in replies if r.status_code not in RULED]
    assert not failed, failed


async def lined_up(
    stack: Stack, holds: list[tuple[str, tuple[Any, ...]]], *requests: Awaitable[httpx.Response]
) -> list[httpx.Response]:
    """Runs the requests while another transaction holds every lock they need (`holds`),
    and releases those locks at once when the requests are all waiting for them."""
    async with await psycopg.AsyncConnection.connect(stack.database_url) as holder:
        for sql, params in holds:
            await holder.execute(sql, params)
        racing = [asyncio.ensure_future(r) for r in requests]
        await asyncio.sleep(0.5)  # every request is now queued behind `holder`
        assert not any(r.done() for r in racing), "a request did not wait for the locks"
        await holder.commit()
        return list(await asyncio.gather(*racing))


def user_locks(tenant: Tenant, *users: str) -> tuple[str, tuple[Any, ...]]:
    keys = locks.user_keys(tenant.tenant_id, users)
    sql = "SELECT count(pg_advisory_xact_lock(%s, k)) FROM unnest(%s::int[]) k"
    return sql, (locks.USER_LOCK_CLASS, keys)


def call_row(call: str) -> tuple[str, tuple[Any, ...]]:
    return "SELECT 1 FROM calls WHERE id = %s FOR UPDATE", (call,)


async def end_live(client: httpx.AsyncClient, room: str) -> None:
    live = (await client.get(f"/chat/rooms/{room}/calls/active")).json().get("call")
    if live:
        ok(await client.post(f"/chat/rooms/{room}/calls/{live['id']}/end", json={}))


async def test_two_busy_checks_lock_the_same_users_in_one_order(
    stack: Stack, tenant: Tenant, clients: dict[str, httpx.AsyncClient]
) -> None:
    """Two 1:1 starts under the "reject" busy policy, by each side of two rooms with the
    same two members: both lock alice and bob before looking. In caller-first order,
    alice would hold her lock and wait for bob's while bob holds his and waits for hers."""
    tenant.patch_settings(busyPolicy="reject")
    one, two = tenant.room("alice", "bob"), tenant.room("bob", "alice")
    alice, bob = clients["alice"], clients["bob"]
    for _ in range(ROUNDS):
        ok(
            *await lined_up(
                stack,
                [user_locks(tenant, "alice", "bob")],
                alice.post(f"/chat/rooms/{one}/calls", json={}),
                bob.post(f"/chat/rooms/{two}/calls", json={}),
            )
        )
        await asyncio.gather(end_live(alice, one), end_live(bob, two))


async def test_a_join_and_a_busy_check_on_the_same_user(
    stack: Stack, tenant: Tenant, clients: dict[str, httpx.AsyncClient]
) -> None:
    """Bob joins a group call (its row lock, then bob's user lock) while alice's start
    under "reject" locks alice and bob and then looks for bob elsewhere: the busy start
    never waits for a call's row lock while it holds user locks."""
    tenant.patch_settings(busyPolicy="reject")
    group, direct = tenant.room("carol", "bob", "alice"), tenant.room("alice", "bob")
    alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
    for _ in range(ROUNDS):
        started = await carol.post(f"/chat/rooms/{group}/calls", json={})
        ok(started)
        call = started.json()["call"]["id"]
        ok(
            *await lined_up(
                stack,
                [call_row(call), user_locks(tenant, "alice", "bob")],
                bob.post(f"/chat/rooms/{group}/calls/{call}/accept"),
                alice.post(f"/chat/rooms/{direct}/calls", json={}),
            )
        )
        await asyncio.gather(end_live(carol, group), end_live(alice, direct))


async def test_a_start_and_the_starters_removal_from_the_room(
    stack: Stack, tenant: Tenant, clients: dict[str, httpx.AsyncClient]
) -> None:
    """Carol's start (her membership row, then the live call's row) against her removal
    from the room (the membership row deleted, then the live call's row)."""
    room = tenant.room("alice", "bob", "carol")
    alice, carol, api = clients["alice"], clients["carol"], clients["api"]
    membership = (
        "SELECT 1 FROM room_members WHERE room_id = %s AND user_id = 'carol' FOR UPDATE",
        (room,),
    )
    for _ in range(ROUNDS):
        started = await alice.post(f"/chat/rooms/{room}/calls", json={})
        ok(started)
        ok(
            *await lined_up(
                stack,
                [membership, call_row(started.json()["call"]["id"])],
                carol.post(f"/chat/rooms/{room}/calls", json={}),
                api.delete(f"/chat/rooms/{room}/members/carol"),
            )
        )
        ok(await api.post(f"/chat/rooms/{room}/members", json={"userId": "carol"}))
        await end_live(alice, room)
