"""The outbox relay against the real stack: events committed while NATS is down survive a
crash of the relay; a bad event is dead-lettered without delaying anyone; a frozen
lane leader is replaced within 30 s; retention prunes old rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import nats
import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import REGISTRY
from sendsar.calls.v1 import events_pb2

from devstack import postgres
from devstack.procs import ROOT, free_port, grpc_serving
from services.common.db import connect_listener, create_engine, open_pool
from services.common.interceptors import REVOKED_CHANNEL
from services.common.models import new_id
from services.common.settings import load_settings
from services.events import retention, types
from services.events.relay import FOLLOW_SECONDS, LOCK_CLASS, OutboxRelay
from tests.conftest import Tenant, create_tenant
from tests.integration.realtime import Device, settle
from tests.stack import Stack, new_workdir


@pytest.fixture
async def devices(stack: Stack) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Device] = []

    async def open_device(tenant: Tenant, user_id: str, name: str | None = None) -> Device:
        device = await Device(name or user_id).connect(stack.rest, tenant.session_token(user_id))
        opened.append(device)
        return device

    yield open_device
    for device in opened:
        await device.close()


def post(client: Any, path: str, **body: Any) -> dict[str, Any]:
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _lifecycle(tenant: Tenant, rooms: list[str]) -> list[str]:
    """Starts, accepts and ends a call in each room; returns the call ids."""
    ids = []
    alice, bob = tenant.user("alice"), tenant.user("bob")
    for room in rooms:
        call = post(alice, f"/chat/rooms/{room}/calls")["call"]
        post(bob, f"/chat/rooms/{room}/calls/{call['id']}/accept")
        post(alice, f"/chat/rooms/{room}/calls/{call['id']}/end")
        ids.append(call["id"])
    return ids


async def _expect_each_once(device: Device, call_ids: list[str]) -> None:
    for call_id in call_ids:
        for event_type in ("call.invite", "call.accepted", "call.ring_stopped", "call.ended"):
            await device.wait_for(event_type, call_id, within=30)
    await settle(2)
    for call_id in call_ids:
        ids = [d["id"] for t, d in device.events if d["call"]["id"] == call_id]
        # invite, accepted, ring_stopped, ended: once each
        assert len(ids) == len(set(ids)) == 4, device.events


@pytest.mark.slow
async def test_relay_killed_with_unpublished_events_loses_nothing(
    stack: Stack, tenant: Tenant, devices: Callable[..., Any]
) -> None:
    """Events committed while NATS is down wait in the outbox through a crash of the relay."""
    rooms = [tenant.room("alice", "bob") for _ in range(2)]
    bob = await devices(tenant, "bob")
    stack.stop_nats()
    try:
        committed = await asyncio.to_thread(_lifecycle, tenant, rooms)
        stack.procs["calls"].kill()  # the relay dies with its events unpublished
    finally:
        stack.start_nats()
        stack.start_grpc_service("calls", "services.calls")
    await _expect_each_once(bob, committed)


# --- bad events, lanes, frozen leaders, retention ------------------------------------------


def _event(tenant_id: str, recipients: list[str], event_type: str = "call.invite") -> Any:
    event = events_pb2.CallEvent(
        id=new_id("evt"), type=event_type, tenant_id=tenant_id, recipient_user_ids=recipients
    )
    event.call.id = new_id("call")
    return event


def _write_outbox(database_url: str, rows: list[tuple[str, str, str, bytes]]) -> None:
    """Outbox rows (id, tenant_id, subject, payload) as the writer commits them."""
    with psycopg.connect(database_url) as db:
        with db.cursor() as cur:
            cur.executemany(
                "INSERT INTO outbox (id, tenant_id, subject, payload) VALUES (%s, %s, %s, %s)",
                rows,
            )
            cur.execute(f"NOTIFY {types.NOTIFY_CHANNEL}")
        db.commit()


def _query(database_url: str, sql: str, *args: Any) -> list[Any]:
    with psycopg.connect(database_url, autocommit=True) as db:
        return list(db.execute(sql, args).fetchall())


async def _poll(check: Callable[[], Any], what: str, within: float) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not within {within}s")


async def test_an_unpublishable_event_never_delays_another_invite(
    stack: Stack, new_tenant: Callable[..., Tenant], devices: Callable[..., Any]
) -> None:
    """An event over NATS's max_payload, in the very lane of the next invites, is
    dead-lettered with its error and a log line; the invites after it ring at once."""
    a, b = new_tenant(), new_tenant()
    a_room, b_room = a.room("alice", "bob"), b.room("alice", "bob")
    a_bob, b_bob = await devices(a, "bob", "a-bob"), await devices(b, "bob", "b-bob")
    huge = _event(a.tenant_id, [f"user-{i:0120d}" for i in range(9000)])  # > 1 MiB
    payload = huge.SerializeToString()
    assert len(payload) > 1 << 20
    await asyncio.to_thread(
        _write_outbox,
        stack.database_url,
        [(huge.id, a.tenant_id, types.subject(a.tenant_id, types.INVITE), payload)],
    )
    started = time.monotonic()
    a_call = post(a.user("alice"), f"/chat/rooms/{a_room}/calls")["call"]
    b_call = post(b.user("alice"), f"/chat/rooms/{b_room}/calls")["call"]
    await a_bob.wait_for("call.invite", a_call["id"], within=10)
    await b_bob.wait_for("call.invite", b_call["id"], within=10)
    assert time.monotonic() - started < 10

    dead = await _poll(
        lambda: _query(
            stack.database_url,
            "SELECT tenant_id, error, attempts, length(payload) FROM outbox_dead_letters"
            " WHERE id = %s",
            huge.id,
        ),
        "the dead letter",
        10,
    )
    tenant_id, error, attempts, size = dead[0]
    assert tenant_id == a.tenant_id and "MaxPayloadError" in error and attempts == 1
    assert size == len(payload)  # kept whole, for an operator to inspect
    assert _query(stack.database_url, "SELECT 1 FROM outbox WHERE id = %s", huge.id) == []
    logs = "".join(p.log.read_text(errors="replace") for p in stack.procs.values())
    assert "outbox event dead-lettered" in logs and huge.id in logs
    assert a_bob.of("call.invite", huge.call.id) == []


@pytest.fixture
def scratch_db(stack: Stack) -> Iterator[str]:
    """A database of its own with the schema, for a relay or retention that must not
    share its tables with the stack's relays."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    url = postgres.url(stack.pg_port, name)
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=stack.env(DATABASE_URL=url),
        check=True,
        capture_output=True,
    )
    yield url
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        db.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def test_an_event_failing_again_and_again_is_dead_lettered_and_counted(
    stack: Stack, scratch_db: str
) -> None:
    """No stream takes the bad event's subject: it fails while JetStream answers, so
    after OUTBOX_MAX_ATTEMPTS rounds it is dead-lettered; the good event behind it in the
    same lane is published meanwhile."""
    settings = load_settings(
        DATABASE_URL=scratch_db,
        NATS_URL=stack.nats_url,
        OUTBOX_MAX_ATTEMPTS=3,
        OUTBOX_POLL_SECONDS=0.1,
        OUTBOX_PUBLISH_TIMEOUT_SECONDS=2,
        ENV="test",
    )
    tenant = new_id("ten")
    bad, good = _event(tenant, ["bob"]), _event(tenant, ["bob"])
    await asyncio.to_thread(
        _write_outbox,
        scratch_db,
        [
            (bad.id, tenant, f"sendsar_unstored.{tenant}.calls.invite", bad.SerializeToString()),
            (good.id, tenant, types.subject(tenant, types.INVITE), good.SerializeToString()),
        ],
    )

    def counted() -> float:
        return REGISTRY.get_sample_value("outbox_dead_letters_total", {"reason": "failing"}) or 0

    before = counted()
    task = asyncio.create_task(OutboxRelay(settings).run())
    try:
        dead = await _poll(
            lambda: _query(
                scratch_db, "SELECT error, attempts FROM outbox_dead_letters WHERE id = %s", bad.id
            ),
            "the dead letter",
            30,
        )
        assert dead[0][1] == 3 and "NoStreamResponseError" in dead[0][0], dead
        published = _query(scratch_db, "SELECT published_at FROM outbox WHERE id = %s", good.id)
        assert published[0][0] is not None
        assert counted() == before + 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_two_replicas_do_not_both_answer_every_event(stack: Stack, scratch_db: str) -> None:
    """Every replica hears every NOTIFY. The one that does not lead a lane lets the leader
    answer first, so events committed one at a time cost about a round each, not one
    round per replica (a wasted transaction each on every other replica)."""
    settings = load_settings(
        DATABASE_URL=scratch_db, NATS_URL=stack.nats_url, OUTBOX_POLL_SECONDS=60, ENV="test"
    )
    replicas = [OutboxRelay(settings) for _ in range(2)]
    tasks = [asyncio.create_task(job()) for r in replicas for job in (r.run, r.listen)]

    def wasted() -> float:
        return sum(
            REGISTRY.get_sample_value("outbox_relay_rounds_total", {"found": found}) or 0
            for found in ("nothing", "led_elsewhere")
        )

    def write(event: Any) -> None:
        subject = types.subject(tenant, types.INVITE)
        with psycopg.connect(scratch_db) as db:
            db.execute(
                "WITH row AS (INSERT INTO outbox (id, tenant_id, subject, payload)"
                " VALUES (%s, %s, %s, %s) RETURNING lane)"
                f" SELECT pg_notify('{types.NOTIFY_CHANNEL}', lane::text) FROM row",
                (event.id, tenant, subject, event.SerializeToString()),
            )

    try:
        await asyncio.sleep(2)  # both started: their first round of every lane is done
        before = wasted()
        tenant = new_id("ten")
        for _ in range(20):
            await asyncio.to_thread(write, _event(tenant, ["bob"]))
            await asyncio.sleep(0.05)
        await _poll(
            lambda: not _query(scratch_db, "SELECT 1 FROM outbox WHERE published_at IS NULL"),
            "every event published",
            10,
        )
        # Both answering every NOTIFY would waste about 20 rounds here.
        assert wasted() - before <= 5, wasted() - before
        # And no event waited for a follower: the leader answered each one at once.
        waits = _query(
            scratch_db,
            "SELECT max(extract(epoch FROM published_at - created_at)) FROM outbox"
            " WHERE tenant_id = %s",
            tenant,
        )
        assert float(waits[0][0]) < FOLLOW_SECONDS, waits
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_publishing_leaves_no_subscription_behind(stack: Stack, scratch_db: str) -> None:
    """Each relay round publishes through the connection's one JetStream context: a
    context per round subscribed a new reply inbox every time and never dropped it, so
    a relay's connection (and NATS's interest graph) grew with every batch."""
    settings = load_settings(
        DATABASE_URL=scratch_db, NATS_URL=stack.nats_url, OUTBOX_POLL_SECONDS=0.1, ENV="test"
    )
    task = asyncio.create_task(OutboxRelay(settings).run())
    tenant = new_id("ten")
    subject = types.subject(tenant, types.INVITE)

    def unpublished() -> bool:
        return bool(_query(scratch_db, "SELECT 1 FROM outbox WHERE published_at IS NULL"))

    try:
        for _ in range(15):  # a round each
            event = _event(tenant, ["bob"])
            await asyncio.to_thread(
                _write_outbox, scratch_db, [(event.id, tenant, subject, event.SerializeToString())]
            )
            await _poll(lambda: not unpublished(), "the event published", 10)
        relays = [
            c
            for c in await asyncio.to_thread(_connections, stack)
            if c.get("name") == "outbox-relay"
        ]
        assert relays  # this test's relay, and the stack's calls workers'
        assert all(c.get("subscriptions", 0) <= 3 for c in relays), relays
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _connections(stack: Stack) -> list[dict[str, Any]]:
    """NATS's view of its client connections (its monitoring endpoint)."""
    url = f"http://127.0.0.1:{stack.nats_monitor_port}/connz?subs=1&limit=1000"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return list(json.load(reply)["connections"])


def _held_lanes(database_url: str, pid: int) -> list[int]:
    """The relay lanes whose advisory lock the process `pid` holds right now."""
    rows = _query(
        database_url,
        "SELECT l.objid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s"
        " AND a.application_name = %s",
        LOCK_CLASS,
        f"events-{pid}",
    )
    return [int(r[0]) for r in rows]


def _stored_ids(stack: Stack, tenants: list[str]) -> list[str]:
    """Every event id the stream holds for these tenants (after JetStream's de-dup)."""

    async def read() -> list[str]:
        nc = await nats.connect(stack.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(
                "",
                stream=types.STREAM,
                config=ConsumerConfig(
                    filter_subjects=[f"sendsar.{t}.calls.>" for t in tenants],
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.ALL,
                    mem_storage=True,
                ),
            )
            ids: list[str] = []
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=2)
                except TimeoutError:
                    return ids
                ids.extend(events_pb2.CallEvent.FromString(m.data).id for m in msgs)
        finally:
            await nc.close()

    return asyncio.run(read())


async def test_a_database_crash_after_publishing_duplicates_nothing_in_the_stream() -> None:
    """The relay marks events published without waiting for the WAL flush. PostgreSQL
    killed before it flushed them (its WAL writer held back to make that certain): after
    recovery the marks are gone and the relay publishes the events again, and JetStream's
    de-duplication keeps each in the stream once."""
    own = Stack(workdir=new_workdir())  # a crash must not touch the shared stack
    try:
        own.start_postgres()
        own.start_nats()
        with psycopg.connect(own.database_url, autocommit=True) as db:
            db.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            db.execute("SELECT pg_reload_conf()")
        settings = load_settings(
            DATABASE_URL=own.database_url,
            NATS_URL=own.nats_url,
            OUTBOX_POLL_SECONDS=0.2,
            ENV="test",
        )
        tenant = new_id("ten")
        events = [_event(tenant, ["bob"]) for _ in range(50)]
        subject = types.subject(tenant, types.INVITE)
        await asyncio.to_thread(
            _write_outbox,
            own.database_url,
            [(e.id, tenant, subject, e.SerializeToString()) for e in events],
        )

        def published() -> float:
            return REGISTRY.get_sample_value("outbox_events_published_total") or 0

        def unpublished() -> int:
            sql = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            return int(_query(own.database_url, sql)[0][0])

        before = published()
        task = asyncio.create_task(OutboxRelay(settings).run())
        try:
            await _poll(lambda: unpublished() == 0, "the first publication", 15)
            own.procs["postgres"].kill()  # SIGKILL: no shutdown checkpoint, a crash
            own.start_postgres()
            assert unpublished() == len(events)  # the marks were lost with the crash
            await _poll(lambda: unpublished() == 0, "the second publication", 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert published() - before == 2 * len(events)
        stored = await asyncio.to_thread(_stored_ids, own, [tenant])
        assert sorted(stored) == sorted(e.id for e in events)
    finally:
        own.stop_all()


@pytest.mark.slow
async def test_a_frozen_leader_loses_its_lanes_within_30s_and_nothing_is_lost(
    stack: Stack, scratch_db: str
) -> None:
    """Two relay replicas of their own database: the one leading a lane is frozen
    (SIGSTOP) mid-batch; the database ends its idle transaction, the other replica (a
    follower of that lane until then) publishes the lane, and after de-dup every event is
    in the stream exactly once, also once the frozen one resumes. (Only these two read
    this outbox: the stack's relays would lead every lane themselves.)"""
    replicas = []
    for name in ("relay-2", "relay-3"):
        port = free_port()
        replicas.append(
            stack.start_worker(
                name,
                "services.events",
                ready=lambda port=port: grpc_serving(f"127.0.0.1:{port}"),
                GRPC_PORT=str(port),
                DATABASE_URL=scratch_db,
            )
        )
    tenants = [new_id("ten") for _ in range(16)]  # every lane gets rows
    rows = []
    for i in range(20_000):
        tenant = tenants[i % len(tenants)]
        event = _event(tenant, ["bob"])
        rows.append(
            (event.id, tenant, types.subject(tenant, types.INVITE), event.SerializeToString())
        )
    frozen = None
    try:
        await asyncio.to_thread(_write_outbox, scratch_db, rows)
        frozen_at = 0.0
        deadline = time.monotonic() + 30
        while frozen is None and time.monotonic() < deadline:
            for replica in replicas:
                os.kill(replica.pid, signal.SIGSTOP)
                if await asyncio.to_thread(_held_lanes, scratch_db, replica.pid):
                    frozen, frozen_at = replica, time.monotonic()
                    break
                os.kill(replica.pid, signal.SIGCONT)
            await asyncio.sleep(0.02)
        assert frozen is not None, "neither replica was seen leading a lane"

        def unpublished() -> int:
            sql = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            return int(_query(scratch_db, sql)[0][0])

        await _poll(lambda: unpublished() == 0, "every event published", 30)
        assert time.monotonic() - frozen_at < 30
    finally:
        if frozen is not None:
            os.kill(frozen.pid, signal.SIGCONT)
    await asyncio.sleep(3)  # the resumed replica finds its transaction gone
    stored = await asyncio.to_thread(_stored_ids, stack, tenants)
    assert len(stored) == len(set(stored)) == len(rows)
    assert set(stored) == {r[0] for r in rows}
    for replica in replicas:
        replica.stop()


async def test_retention_prunes_only_old_finished_rows_in_small_batches(scratch_db: str) -> None:
    def setup() -> None:
        with psycopg.connect(scratch_db) as db:
            for name, age, published in [
                ("old-published", "8 days", True),
                ("old-published-2", "9 days", True),
                ("old-published-3", "10 days", True),
                ("old-unpublished", "8 days", False),
                ("new-published", "1 day", True),
            ]:
                db.execute(
                    "INSERT INTO outbox (id, tenant_id, subject, payload, created_at, published_at)"
                    " VALUES (%s, 't', 's', '', now() - %s::interval,"
                    " CASE WHEN %s THEN now() END)",
                    (name, age, published),
                )
            for seq, age in [(1, "8 days"), (2, "1 day")]:
                db.execute(
                    "INSERT INTO outbox_dead_letters (seq, id, tenant_id, subject, payload, error,"
                    " attempts, created_at, failed_at) VALUES (%s, %s, 't', 's', '', 'e', 1,"
                    " now(), now() - %s::interval)",
                    (seq, f"dead-{seq}", age),
                )
            for name, status, age in [
                ("old-delivered", "delivered", "8 days"),
                ("old-failed", "failed", "8 days"),
                ("old-pending", "pending", "8 days"),
                ("new-delivered", "delivered", "1 day"),
            ]:
                db.execute(
                    "INSERT INTO webhook_deliveries (id, tenant_id, event_id, event_type, body,"
                    " status, attempts, created_at) VALUES (%s, 't', %s, 'call.ended', '{}', %s,"
                    " 1, now() - %s::interval)",
                    (name, name, status, age),
                )
            db.commit()

    await asyncio.to_thread(setup)
    settings = load_settings(DATABASE_URL=scratch_db, ENV="test")
    engine = create_engine(settings, pool_size=1)
    week = timedelta(days=7)
    try:
        assert await retention.prune(engine, retention.OUTBOX, older_than=week, batch=2) == 3
        assert await retention.prune(engine, retention.DEAD_LETTERS, older_than=week, batch=2) == 1
        assert (
            await retention.prune(engine, retention.WEBHOOK_DELIVERIES, older_than=week, batch=1)
            == 2
        )
    finally:
        await engine.dispose()
    outbox = {r[0] for r in _query(scratch_db, "SELECT id FROM outbox")}
    assert outbox == {"old-unpublished", "new-published"}
    assert {r[0] for r in _query(scratch_db, "SELECT id FROM outbox_dead_letters")} == {"dead-2"}
    deliveries = {r[0] for r in _query(scratch_db, "SELECT id FROM webhook_deliveries")}
    assert deliveries == {"old-pending", "new-delivered"}


async def test_the_stream_is_bounded_by_age_and_bytes(stack: Stack) -> None:
    defaults = load_settings(DATABASE_URL=stack.database_url, ENV="test")
    nc = await nats.connect(stack.nats_url)
    try:
        info = await nc.jetstream().stream_info(types.STREAM)
    finally:
        await nc.close()
    assert info.config.max_bytes == defaults.NATS_STREAM_MAX_BYTES == 1 << 30
    assert info.config.max_age == defaults.NATS_STREAM_MAX_AGE_SECONDS == 7 * 24 * 3600


SESSION_SETTINGS = (
    "idle_in_transaction_session_timeout",
    "lock_timeout",
    "statement_timeout",
    "tcp_keepalives_idle",
    "application_name",
)


async def test_database_sessions_carry_keepalives_and_timeouts(stack: Stack) -> None:
    """Every kind of connection the services open (SQLAlchemy's engine, the hot path's
    psycopg pool, the LISTEN connections) carries the settings' timeouts and keepalives."""
    settings = load_settings(DATABASE_URL=stack.database_url, ENV="test", SERVICE_NAME="probe")
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            shown = {
                name: (await conn.exec_driver_sql(f"SHOW {name}")).scalar()
                for name in SESSION_SETTINGS
            }
    finally:
        await engine.dispose()
    expected = {
        "idle_in_transaction_session_timeout": "10s",
        "lock_timeout": "5s",
        "statement_timeout": "15s",
        "tcp_keepalives_idle": "10",
        "application_name": f"probe-{os.getpid()}",
    }
    assert shown == expected
    pool = await open_pool(settings, max_size=1)
    try:
        async with pool.connection() as pooled:
            assert await _shown(pooled) == expected
    finally:
        await pool.close()
    listener = await connect_listener(settings)
    try:
        assert await _shown(listener) == expected
        assert listener.info.get_parameters()["keepalives"] == "1"
    finally:
        await listener.close()


async def _shown(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    return {
        name: str((await (await conn.execute(f"SHOW {name}")).fetchone() or ("",))[0])
        for name in SESSION_SETTINGS
    }


async def test_running_services_listen_with_their_settings(stack: Stack) -> None:
    """The LISTEN connections of the running stack (API keys revoked, outbox lanes) are
    opened with the services' connection settings: each names its service and process,
    which only those settings set (a connection that skipped them would be anonymous)."""
    tenant = create_tenant(stack, "listeners")
    tenant.patch_settings(ringTimeoutSeconds=30)  # an API key checked: its listener starts
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        rows = await (
            await conn.execute(
                "SELECT query, application_name FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
            )
        ).fetchall()
    channels = {query.split()[1] for query, _ in rows}
    assert {REVOKED_CHANNEL, types.NOTIFY_CHANNEL} <= channels, rows
    assert all(re.fullmatch(r"[a-z][a-z-]*-[0-9]+", name) for _, name in rows), rows
