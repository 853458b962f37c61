"""PostgreSQL failover under a steady call load: the primary killed (-9), its synchronous
standby promoted, and the running stack (every process as it was, DATABASE_URL naming
both hosts) serves again, having lost, doubled or skipped nothing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sendsar.calls.v1 import events_pb2

from devstack import postgres
from devstack.procs import Proc, python_env
from services.common.db import open_pool
from services.common.settings import load_settings
from tests.cluster.engines import (
    CallLoad,
    Hooks,
    eventually,
    outbox,
    pairs,
    published_once,
    running_stack,
    subscribe,
)
from tests.conftest import Tenant, create_tenant
from tests.stack import Stack, new_workdir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RING_SECONDS = 5  # the shortest ring window a tenant may set
# How long the database is away before the standby is promoted (a failover manager
# noticing the dead primary): longer than a request waits for a connection, so requests
# fail meanwhile, and than the pools' first reconnection attempts.
DETECTION_SECONDS = 8.0
RECOVERY_SECONDS = 15.0  # the bound: serving again this long after the promote
# Long enough for psycopg_pool's own pause between attempts to have doubled to 16 s.
OUTAGE_SECONDS = 16.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(pg_standby=True) as s:
        yield s


async def ring_calls(tenant: Tenant, rooms: list[tuple[str, str]]) -> list[str]:
    """1:1 calls started and left ringing (nobody answers)."""
    started = []
    for room, caller in rooms:
        with tenant.user(caller) as user:
            reply = await asyncio.to_thread(user.post, f"/chat/rooms/{room}/calls", json={})
        assert reply.status_code == 200, reply.text
        started.append(str(reply.json()["call"]["id"]))
    return started


async def calls_table(stack: Stack, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cur = await conn.execute(
            "SELECT id, status, end_reason, answered_at FROM calls WHERE id = ANY(%s)", [ids]
        )
        rows = await cur.fetchall()
    return {r[0]: {"status": r[1], "end_reason": r[2], "answered": r[3] is not None} for r in rows}


async def events_by_call(stack: Stack) -> dict[str, Counter[str]]:
    """Per call, how many distinct events of each type the outbox holds."""
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        rows = await (await conn.execute("SELECT payload FROM outbox")).fetchall()
    seen: dict[str, set[tuple[str, str]]] = {}
    for (payload,) in rows:
        event = events_pb2.CallEvent()
        event.ParseFromString(bytes(payload))
        seen.setdefault(event.call.id, set()).add((event.type, event.id))
    return {call: Counter(t for t, _ in events) for call, events in seen.items()}


async def test_the_primary_dies_the_standby_takes_over_and_nothing_is_lost(stack: Stack) -> None:
    tenant = await asyncio.to_thread(create_tenant, stack)
    ringing = await asyncio.to_thread(create_tenant, stack)
    await asyncio.to_thread(ringing.patch_settings, ringTimeoutSeconds=RING_SECONDS)
    hooks = await Hooks().start()
    await asyncio.to_thread(subscribe, tenant, hooks.url)
    ring_rooms = [
        (await asyncio.to_thread(ringing.room, f"r{i}a", f"r{i}b"), f"r{i}a") for i in range(3)
    ]
    load = CallLoad(stack.rest, await pairs(tenant, stack.rest, 3))
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    try:
        await asyncio.sleep(3)
        # Rings whose deadline falls while the database is away.
        rings = await ring_calls(ringing, ring_rooms)
        await asyncio.sleep(RING_SECONDS - 3)
        listening = await listeners(stack)
        killed = time.monotonic()
        stack.procs["postgres"].kill()
        await asyncio.sleep(DETECTION_SECONDS)
        promoted = time.monotonic()
        async with await psycopg.AsyncConnection.connect(
            f"postgresql://postgres@127.0.0.1:{stack.standby_port}/postgres", autocommit=True
        ) as conn:
            await conn.execute("SELECT pg_promote(wait => true)")
        await eventually(
            lambda: any(r.status == 200 and r.sent > promoted for r in load.replies),
            "a request served by the new primary",
            within=RECOVERY_SECONDS + 5,
        )
        await asyncio.sleep(4)
    finally:
        stop.set()
        await running

    # Requests failed only while the database was away, and only as 503 UNAVAILABLE.
    failed = load.failures()
    assert {(r.status, r.reason) for r in failed} <= {(503, "UNAVAILABLE")}, failed[:5]
    # Both kinds of connection met the outage: the call path's pool, SQLAlchemy's engine.
    failed_ops = {r.op for r in failed}
    assert "settings" in failed_ops and failed_ops & {"start", "accept", "end"}, failed_ops
    assert all(r.sent >= killed - 1 for r in failed)
    last_failure = max((r.answered for r in failed), default=promoted)
    first_served = min(r.answered for r in load.replies if r.status == 200 and r.sent > promoted)
    assert last_failure - promoted < RECOVERY_SECONDS
    # No process was restarted: each is the one started before the failover.
    assert all(proc.alive() for proc in stack.procs.values() if proc.name != "postgres")
    assert "worker exited" not in stack.procs["calls"].log.read_text()

    # Every LISTEN connection came back (the relay's, the API-key revocation listeners).
    await eventually(
        lambda: _listening_again(stack, listening), "the LISTEN connections back", within=10
    )

    # Every acknowledged change is there, once: RPO 0.
    acknowledged = [r for r in load.replies if r.status == 200 and r.call_id is not None]
    assert any(r.answered < killed for r in acknowledged)
    ids = list({str(r.call_id) for r in acknowledged})
    table = await calls_table(stack, ids + rings)
    for r in acknowledged:
        call = table[str(r.call_id)]
        if r.op == "accept":
            assert call["answered"], r
        if r.op == "end":
            assert (call["status"], call["end_reason"]) == ("ended", "hangup"), r

    # Rings due during the outage expired after it, once each.
    await eventually(
        lambda: _all_ended(stack, rings), "the rings due in the outage timed out", within=15
    )
    table = await calls_table(stack, rings)
    assert {(c["status"], c["end_reason"]) for c in table.values()} == {("ended", "timeout")}

    # The relay caught up; every event of every call is in the outbox once per kind and
    # was published once (JetStream dropped any re-publish of a mark lost with the primary).
    # Each event is at the webhook, or its delivery is pending: a claim committed just
    # before the kill was sent by nobody and is retried when its lease (60 s) runs out.
    async def caught_up() -> bool | tuple[int, list[str]]:
        box = await outbox(stack)
        missing = box.events[tenant.tenant_id] - hooks.ids() - await pending_deliveries(stack)
        return (box.unpublished == 0 and not missing) or (box.unpublished, sorted(missing)[:5])

    await eventually(caught_up, "the outbox published and at the webhook", within=30)
    await published_once(stack)
    per_call = await events_by_call(stack)
    for call_id in ids + rings:
        assert per_call[call_id]["call.ended"] == 1, (call_id, per_call[call_id])
    for call_id in rings:
        assert per_call[call_id]["call.missed"] == 1

    print(
        f"\nPostgreSQL failover: {len(load.started)} calls; {len(failed)} requests answered 503;"
        f" first 200 {first_served - promoted:.1f} s and last 503"
        f" {last_failure - promoted:.1f} s after the promote ({promoted - killed:.1f} s after"
        " the kill); acknowledged writes lost: 0"
    )
    for pair in load.pairs:
        await pair.device.close()
    await hooks.stop()


async def pending_deliveries(stack: Stack) -> set[str]:
    """The event ids of webhook deliveries still to be sent."""
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cur = await conn.execute("SELECT event_id FROM webhook_deliveries WHERE status = 'pending'")
        return {str(event_id) for (event_id,) in await cur.fetchall()}


async def listeners(stack: Stack) -> set[tuple[str, str]]:
    """The LISTEN connections open now: (process, channel)."""
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cur = await conn.execute(
            "SELECT application_name, query FROM pg_stat_activity"
            " WHERE state = 'idle' AND query LIKE 'LISTEN %'"
        )
        found = {(str(name), str(query)) for name, query in await cur.fetchall()}
    assert found, "no LISTEN connection to compare"
    return found


async def _listening_again(stack: Stack, before: set[tuple[str, str]]) -> bool:
    return await listeners(stack) >= before


async def _all_ended(stack: Stack, ids: list[str]) -> bool:
    return all(c["status"] == "ended" for c in (await calls_table(stack, ids)).values())


@pytest.fixture
def lone_postgres() -> Iterator[tuple[Stack, int]]:
    """A PostgreSQL of its own (no standby), to be killed and started again."""
    s = Stack(workdir=new_workdir())
    pgdata = s.workdir / "pgdata"
    postgres.init(pgdata)
    try:
        yield s, s.pg_port
    finally:
        s.stop_all()


def _start(stack: Stack) -> None:
    stack.procs["postgres"] = Proc(
        "postgres",
        postgres.server_command(stack.workdir / "pgdata", stack.pg_port),
        python_env({}),
        stack.workdir,
        user=postgres.run_as(),
    )
    postgres.wait_ready(stack.pg_port)


async def test_a_pool_fails_one_request_and_reconnects_within_seconds_after_an_outage(
    lone_postgres: tuple[Stack, int],
) -> None:
    """A pool's idle connections all die with their server: the first one found broken
    gets the rest checked (one failed request per pool, not one per idle connection). And
    a long outage does not stretch the pool's pause between attempts to connect: it
    serves within seconds of the server being back, not after its next doubling."""
    stack, _ = lone_postgres
    _start(stack)
    settings = load_settings(
        ENV="test",
        DATABASE_URL=stack.database_url,
        DB_POOL_TIMEOUT_SECONDS="1",
        DB_CONNECT_TIMEOUT_SECONDS="1",
    )
    pool = await open_pool(settings, max_size=4, min_size=4)

    async def select_one() -> bool:
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    try:
        await pool.wait(10)  # all four connected
        stack.procs["postgres"].kill()
        _start(stack)
        assert [await select_one() for _ in range(4)] == [False, True, True, True]

        stack.procs["postgres"].kill()
        began = time.monotonic()
        while time.monotonic() - began < OUTAGE_SECONDS:  # requests keep coming meanwhile
            assert not await select_one()
            await asyncio.sleep(0.2)
        _start(stack)
        back = time.monotonic()
        await eventually(select_one, "the pool serving again", within=30)
        waited = time.monotonic() - back
        print(f"\npool serving {waited:.1f} s after its server came back")
        assert waited < 6, "the pool's next attempt came too late"
    finally:
        await pool.close()
