"""Webhooks end to end: a real local HTTP receiver, the tenant's endpoint set over REST,
call events from real calls, the dispatcher's signatures, retries and isolation."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import psycopg
import pytest
from aiohttp import web
from sendsar.calls.v1 import events_pb2

from devstack.procs import free_port, grpc_serving
from services.common.models import new_id
from services.common.settings import load_settings
from services.events import types
from services.webhooks import signing
from services.webhooks.delivery import IDLE_SECONDS, POLL_SECONDS, Deliverer
from tests.conftest import Tenant
from tests.stack import Stack

WAIT = 20.0


@pytest.fixture(scope="module")
def dispatcher(stack: Stack) -> Iterator[None]:
    """The webhook dispatcher, unless the session's stack already runs one."""
    running = stack.procs.get("webhooks")
    if running is not None and running.alive():
        yield
        return
    port = free_port()
    proc = stack.start_worker(
        "webhooks",
        "services.webhooks",
        ready=lambda: grpc_serving(f"127.0.0.1:{port}"),
        GRPC_PORT=str(port),
    )
    yield
    proc.stop()


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A tenant's endpoint. `script` lists the statuses to answer, in order, then 200."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    arrived: int = 0  # requests received, answered or not yet
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrived += 1
        self.changed.set()
        await asyncio.sleep(self.delay)
        status = self.script.pop(0) if self.script else 200
        self.hits.append(Hit(dict(request.headers), body, status))
        self.changed.set()
        # A body the dispatcher must never store or log.
        return web.Response(status=status, text="receiver-private-response-text")

    def of(self, event_type: str, status: int | None = None) -> list[Hit]:
        return [
            h
            for h in self.hits
            if h.event["type"] == event_type and (status is None or h.status == status)
        ]

    async def until(self, done: Callable[[], bool], what: str, within: float = WAIT) -> None:
        async def watch() -> None:
            while not done():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(watch(), within)
        except TimeoutError:
            seen = [(h.event["type"], h.status) for h in self.hits]
            raise AssertionError(f"no {what} within {within}s; got {seen}") from None

    async def wait_for(self, event_type: str, status: int = 200, within: float = WAIT) -> Hit:
        await self.until(
            lambda: bool(self.of(event_type, status)), f"{event_type}/{status}", within
        )
        return self.of(event_type, status)[0]


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver(dispatcher: None) -> AsyncIterator[StartReceiver]:
    runners: list[web.AppRunner] = []

    async def start(**kw: Any) -> Receiver:
        rec = Receiver(**kw)
        app = web.Application()
        app.router.add_post("/hooks", rec.handle)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a random free port, without a race
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks"
        return rec

    yield start
    for runner in runners:
        await runner.cleanup()


async def put_webhook(tenant: Tenant, url: str, events: list[str] | None = None) -> str:
    """PUT /v1/tenant/webhook with the API key; returns the signing secret (shown once)."""

    def put() -> str:
        with tenant.api() as api:
            body: dict[str, Any] = {"url": url}
            if events is not None:
                body["events"] = events
            reply = api.put("/v1/tenant/webhook", json=body)
            assert reply.status_code == 200, reply.text
            return str(reply.json()["secret"])

    return await asyncio.to_thread(put)


async def delete_webhook(tenant: Tenant) -> None:
    def delete() -> None:
        with tenant.api() as api:
            assert api.delete("/v1/tenant/webhook").status_code == 200

    await asyncio.to_thread(delete)


async def start_call(tenant: Tenant, *members: str) -> tuple[str, str]:
    """A new room of `members`; the first starts a call. Returns (room id, call id)."""

    def run() -> tuple[str, str]:
        room = tenant.room(*members)
        reply = tenant.user(members[0]).post(f"/chat/rooms/{room}/calls", json={})
        assert reply.status_code == 200, reply.text
        return room, str(reply.json()["call"]["id"])

    return await asyncio.to_thread(run)


def deliveries(stack: Stack, tenant_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        cur = db.execute(
            "SELECT event_id, event_type, status, attempts, last_error"
            " FROM webhook_deliveries WHERE tenant_id = %s ORDER BY created_at",
            (tenant_id,),
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


async def wait_rows(
    stack: Stack, tenant_id: str, done: Callable[[list[dict[str, Any]]], bool], what: str
) -> list[dict[str, Any]]:
    async def poll() -> list[dict[str, Any]]:
        while True:
            rows = await asyncio.to_thread(deliveries, stack, tenant_id)
            if done(rows):
                return rows
            await asyncio.sleep(0.2)

    try:
        return await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        rows = await asyncio.to_thread(deliveries, stack, tenant_id)
        raise AssertionError(f"deliveries never reached {what}: {rows}") from None


# --- signatures -----------------------------------------------------------------------


async def test_missed_call_is_delivered_signed_and_tampering_is_detected(
    tenant: Tenant, receiver: StartReceiver
) -> None:
    rec = await receiver()
    secret = await put_webhook(tenant, rec.url)
    await asyncio.to_thread(tenant.patch_settings, ringTimeoutSeconds=5)
    _, call_id = await start_call(tenant, "alice", "bob")

    hit = await rec.wait_for("call.missed", within=WAIT + 5)  # rings out after 5 s
    event = hit.event
    assert event["call"]["id"] == call_id and event["call"]["status"] == "ended"
    assert event["call"]["endReason"] == "timeout"
    assert event["tenantId"] == tenant.tenant_id and event["id"].startswith("evt_")
    assert event["occurredAt"].endswith("Z") and "recipientUserIds" not in event
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["Sendsar-Event-Id"] == event["id"]
    timestamp = hit.headers["Sendsar-Timestamp"]
    assert hit.headers["Sendsar-Signature"].startswith(f"t={timestamp},v1=")

    signature = hit.headers["Sendsar-Signature"]
    assert signing.verify(secret, signature, hit.body)
    tampered = hit.body.replace(b'"timeout"', b'"hangup"')
    assert tampered != hit.body
    assert not signing.verify(secret, signature, tampered)
    assert not signing.verify(secret, signature, hit.body + b" ")
    assert not signing.verify("whsec_" + "0" * 40, signature, hit.body)
    # A replayed signature with a forged, fresh timestamp fails too.
    forged = signature.replace(f"t={timestamp}", f"t={int(timestamp) + 1}")
    assert not signing.verify(secret, forged, hit.body)


async def test_only_the_subscribed_types_are_delivered(
    stack: Stack, tenant: Tenant, receiver: StartReceiver
) -> None:
    rec = await receiver()
    await put_webhook(tenant, rec.url, ["call.ended"])
    room, call_id = await start_call(tenant, "alice", "bob")
    reply = await asyncio.to_thread(
        tenant.user("alice").post, f"/chat/rooms/{room}/calls/{call_id}/end", json={}
    )
    assert reply.status_code == 200, reply.text
    hit = await rec.wait_for("call.ended")
    assert hit.event["call"]["id"] == call_id
    # Intake queues a call's events in stream order: with call.ended queued, started,
    # invite and missed were already considered, and skipped.
    rows = await asyncio.to_thread(deliveries, stack, tenant.tenant_id)
    assert [r["event_type"] for r in rows] == ["call.ended"]
    assert {h.event["type"] for h in rec.hits} == {"call.ended"}


# --- retries ----------------------------------------------------------------------------


async def test_failing_receiver_gets_exactly_one_successful_delivery_after_retries(
    stack: Stack, tenant: Tenant, receiver: StartReceiver
) -> None:
    rec = await receiver(script=[500, 500])  # then 200
    secret = await put_webhook(tenant, rec.url, ["call.started"])
    _, call_id = await start_call(tenant, "alice", "bob")

    await rec.wait_for("call.started", status=200)
    rows = await wait_rows(
        stack, tenant.tenant_id, lambda rs: [r["status"] for r in rs] == ["delivered"], "delivered"
    )
    assert rows[0]["attempts"] == 3
    assert rows[0]["last_error"] is None
    attempts = rec.of("call.started")
    assert [h.status for h in attempts] == [500, 500, 200]
    # The same event each time (the receiver de-duplicates on its id), signed afresh.
    assert len({h.headers["Sendsar-Event-Id"] for h in attempts}) == 1
    assert len({h.body for h in attempts}) == 1
    assert all(signing.verify(secret, h.headers["Sendsar-Signature"], h.body) for h in attempts)
    successes = {h.headers["Sendsar-Event-Id"] for h in attempts if 200 <= h.status < 300}
    assert len(successes) == 1 and attempts[-1].event["call"]["id"] == call_id
    # A delivered row is never sent again: a later event of this tenant is delivered
    # (so the dispatcher has moved on) and the first event still has one success.
    await start_call(tenant, "alice", "bob")
    await rec.until(lambda: len(rec.of("call.started", 200)) == 2, "the second call.started")
    assert (
        len([h for h in rec.of("call.started", 200) if h.event["id"] == rows[0]["event_id"]]) == 1
    )


async def test_failures_record_the_status_code_not_the_body(
    stack: Stack, tenant: Tenant, receiver: StartReceiver
) -> None:
    rec = await receiver(script=[503] * 1000)
    await put_webhook(tenant, rec.url, ["call.started"])
    await start_call(tenant, "alice", "bob")
    await rec.until(lambda: len(rec.of("call.started")) >= 2, "two attempts")
    rows = await wait_rows(
        stack, tenant.tenant_id, lambda rs: bool(rs) and rs[0]["attempts"] >= 2, "2 attempts"
    )
    assert rows[0]["status"] == "pending" and rows[0]["last_error"] == "http 503"
    await delete_webhook(tenant)  # its pending delivery ends as failed
    await wait_rows(stack, tenant.tenant_id, lambda rs: rs[0]["status"] == "failed", "failed")


async def test_delivery_gives_up_after_the_retry_window(
    stack: Stack, tenant: Tenant, receiver: StartReceiver
) -> None:
    rec = await receiver(script=[503] * 1000)
    await put_webhook(tenant, rec.url, ["call.started"])
    await start_call(tenant, "alice", "bob")
    first = await rec.wait_for("call.started", status=503)
    event_id = first.headers["Sendsar-Event-Id"]

    def age() -> None:
        # Past WEBHOOK_MAX_AGE_SECONDS (24 h) instead of waiting a day.
        with psycopg.connect(stack.database_url, autocommit=True) as db:
            db.execute(
                "UPDATE webhook_deliveries SET created_at = now() - interval '25 hours'"
                " WHERE event_id = %s",
                (event_id,),
            )

    await asyncio.to_thread(age)
    rows = await wait_rows(
        stack, tenant.tenant_id, lambda rs: rs[0]["status"] == "failed", "failed"
    )
    assert rows[0]["last_error"] == "http 503"
    tries = len(rec.of("call.started"))
    # Sync point: a later event of this tenant goes through the same dispatcher...
    rec.script.clear()
    await start_call(tenant, "alice", "bob")
    await rec.wait_for("call.started", status=200)
    # ...and the failed one was not tried again meanwhile.
    assert len([h for h in rec.hits if h.headers["Sendsar-Event-Id"] == event_id]) == tries


async def test_endpoint_changes_apply_to_pending_retries(
    tenant: Tenant, receiver: StartReceiver
) -> None:
    """The URL and secret are read at send time: a retry goes to the new URL, newly signed."""
    old = await receiver(script=[500] * 1000)
    new = await receiver()
    await put_webhook(tenant, old.url, ["call.started"])
    await start_call(tenant, "alice", "bob")
    failed = await old.wait_for("call.started", status=500)
    new_secret = await put_webhook(tenant, new.url, ["call.started"])
    hit = await new.wait_for("call.started")
    assert hit.headers["Sendsar-Event-Id"] == failed.headers["Sendsar-Event-Id"]
    assert signing.verify(new_secret, hit.headers["Sendsar-Signature"], hit.body)


@pytest.mark.slow
async def test_events_committed_while_nats_is_down_are_delivered(
    stack: Stack, tenant: Tenant, receiver: StartReceiver
) -> None:
    rec = await receiver()
    await put_webhook(tenant, rec.url, ["call.started"])
    stack.stop_nats()
    try:
        _, call_id = await start_call(tenant, "alice", "bob")  # waits in the outbox
    finally:
        stack.start_nats()
    hit = await rec.wait_for("call.started", within=45)
    assert hit.event["call"]["id"] == call_id


# --- isolation --------------------------------------------------------------------------


async def test_a_hanging_tenant_does_not_delay_another(
    new_tenant: Callable[..., Tenant], receiver: StartReceiver
) -> None:
    """More hanging deliveries for one tenant than its share of the dispatcher's slots
    (a quarter of WEBHOOK_CONCURRENCY, 16); the other tenant's event, queued after all of
    them, is still delivered at once (the rest of the slots are free for others)."""
    slow_tenant, fast_tenant = new_tenant(), new_tenant()
    slow = await receiver(delay=30.0)  # beyond WEBHOOK_TIMEOUT_SECONDS: every try times out
    fast = await receiver()
    await put_webhook(slow_tenant, slow.url)  # every type: started + invite per call
    await put_webhook(fast_tenant, fast.url, ["call.started"])
    try:
        for _ in range(20):  # 40 deliveries
            await start_call(slow_tenant, "alice", "bob")
        await slow.until(lambda: slow.arrived >= 8, "8 hanging requests")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await start_call(fast_tenant, "alice", "bob")
        await fast.wait_for("call.started", within=WAIT)
        # Well under the 5 s a freed slot would take if the slow tenant held them all.
        assert loop.time() - started < 3.0
        assert slow.hits == []  # every slow request was still hanging meanwhile
    finally:
        await delete_webhook(slow_tenant)  # its deliveries end as failed


# --- intake: NATS is not trusted blindly ---------------------------------------------------


async def test_an_event_on_another_tenants_subject_is_never_delivered(
    stack: Stack, new_tenant: Callable[..., Tenant], receiver: StartReceiver
) -> None:
    """An event naming tenant A published on tenant B's subject: dropped by the intake,
    so A's endpoint never gets it (and B's never gets A's data)."""
    a, b = new_tenant(), new_tenant()
    rec_a, rec_b = await receiver(), await receiver()
    await put_webhook(a, rec_a.url, ["call.started"])
    await put_webhook(b, rec_b.url, ["call.started"])
    forged = events_pb2.CallEvent(id=new_id("evt"), type="call.started", tenant_id=a.tenant_id)
    forged.call.id = new_id("call")
    forged.occurred_at.GetCurrentTime()
    nc = await nats.connect(stack.nats_url)
    try:
        await nc.jetstream().publish(
            types.subject(b.tenant_id, types.STARTED), forged.SerializeToString()
        )
    finally:
        await nc.close()
    # A later genuine event of A: once it is delivered, the forged one was taken before it.
    _, call_id = await start_call(a, "alice", "bob")
    hit = await rec_a.wait_for("call.started")
    assert hit.event["call"]["id"] == call_id
    await asyncio.sleep(1)
    assert [h.event["id"] for h in rec_a.hits + rec_b.hits if h.event["id"] == forged.id] == []
    ids = {r["event_id"] for r in deliveries(stack, a.tenant_id) + deliveries(stack, b.tenant_id)}
    assert forged.id not in ids


# --- an idle dispatcher sleeps until the next retry ---------------------------------------


async def test_an_idle_deliverer_waits_for_the_next_retry_not_a_poll(scratch_db: str) -> None:
    """With nothing due, the loop's pause runs to the soonest unleased retry (at most
    IDLE_SECONDS); a due row it could not take brings it back after POLL_SECONDS."""
    settings = load_settings(DATABASE_URL=scratch_db, ENV="test")

    def add(name: str, due_in: str, leased: bool = False) -> None:
        with psycopg.connect(scratch_db) as db:
            db.execute(
                "INSERT INTO webhook_deliveries (id, tenant_id, event_id, event_type, body,"
                " status, attempts, next_attempt_at, lease_until) VALUES (%s, 't', %s,"
                " 'call.ended', '{}', 'pending', 0, now() + %s::interval,"
                " CASE WHEN %s THEN now() + interval '1 minute' END)",
                (name, name, due_in, leased),
            )

    deliverer = Deliverer(settings)
    await deliverer.open()
    free = deliverer.refill  # enough free slots for a claim
    try:
        assert await deliverer.pause(free, []) == IDLE_SECONDS  # nothing pending at all
        await asyncio.to_thread(add, "later", "1 hour")
        assert await deliverer.pause(free, []) == IDLE_SECONDS  # a far retry: still capped
        await asyncio.to_thread(add, "leased", "-1 second", True)  # being sent elsewhere
        assert await deliverer.pause(free, []) == IDLE_SECONDS  # not waited for: not ours
        await asyncio.to_thread(add, "soon", "900 milliseconds")
        # Sleeps to it, not a whole idle second (whatever time a loaded machine took
        # between the insert and the read: it is in the past at worst, then POLL_SECONDS).
        assert 0 < await deliverer.pause(free, []) < 0.9
        await asyncio.to_thread(add, "due", "-1 second")  # due, yet the claim took nothing
        assert await deliverer.pause(free, []) == POLL_SECONDS
        assert await deliverer.pause(free, [object()]) == POLL_SECONDS  # busy: look again soon
        assert await deliverer.pause(0, []) == IDLE_SECONDS  # too few slots: a finished send wakes
    finally:
        await deliverer.close()
