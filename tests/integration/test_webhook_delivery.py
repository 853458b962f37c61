"""Signed webhook delivery to a real local HTTP receiver, with retries and isolation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from aiohttp import web

from devstack.procs import free_port
from services.webhooks import signing
from tests.conftest import Tenant


@dataclass
class Receiver:
    """A tenant's webhook endpoint; `script` is the status to answer per request, then 200."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(self.delay)
        status = self.script.pop(0) if self.script else 200
        self.received.append((dict(request.headers), body, status))
        return web.Response(status=status)

    def of(self, event_type: str) -> list[tuple[dict[str, str], bytes, int]]:
        return [r for r in self.received if json.loads(r[1])["type"] == event_type]

    async def wait_for(
        self, event_type: str, status: int = 200, within: float = 20
    ) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for headers, body, got in self.of(event_type):
                if got == status:
                    return headers, body
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event_type} answered {status} within {within}s: {self.received}")


@pytest.fixture
async def receiver() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(**kw: Any) -> Receiver:
        rec = Receiver(**kw)
        app = web.Application()
        app.router.add_post("/hooks", rec.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        rec.url = f"http://127.0.0.1:{port}/hooks"
        return rec

    yield start
    for runner in runners:
        await runner.cleanup()


def subscribe(tenant: Tenant, url: str, events: list[str] | None = None) -> str:
    with tenant.api() as api:
        reply = api.put("/v1/tenant/webhook", json={"url": url, "events": events or []})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["secret"])


def start_call(tenant: Tenant, *members: str) -> tuple[str, str]:
    room = tenant.room(*members)
    reply = tenant.user(members[0]).post(f"/chat/rooms/{room}/calls", json={})
    assert reply.status_code == 200, reply.text
    return room, str(reply.json()["call"]["id"])


async def test_missed_call_webhook_is_signed_and_tampering_is_detected(
    tenant: Tenant, receiver: Any
) -> None:
    rec = await receiver()
    secret = subscribe(tenant, rec.url)
    tenant.patch_settings(ringTimeoutSeconds=5)
    _, call_id = start_call(tenant, "alice", "bob")
    headers, body = await rec.wait_for("call.missed")

    event = json.loads(body)
    assert event["call"]["id"] == call_id and event["call"]["status"] == "ended"
    assert event["tenantId"] == tenant.tenant_id and headers["Sendsar-Event-Id"] == event["id"]
    assert "recipientUserIds" not in event
    assert signing.verify(secret, headers["Sendsar-Signature"], body)
    assert headers["Sendsar-Signature"].startswith(f"t={headers['Sendsar-Timestamp']},")
    assert not signing.verify(
        secret, headers["Sendsar-Signature"], body.replace(b"ended", b"activ")
    )
    assert not signing.verify("whsec_wrong", headers["Sendsar-Signature"], body)


async def test_event_filter_limits_deliveries(tenant: Tenant, receiver: Any) -> None:
    rec = await receiver()
    subscribe(tenant, rec.url, ["call.ended"])
    room, call_id = start_call(tenant, "alice", "bob")
    assert tenant.user("alice").post(f"/chat/rooms/{room}/calls/{call_id}/end").status_code == 200
    await rec.wait_for("call.ended")
    await asyncio.sleep(1.5)
    assert {json.loads(b)["type"] for _, b, _ in rec.received} == {"call.ended"}


async def test_failing_receiver_gets_exactly_one_success_after_retries(
    tenant: Tenant, receiver: Any
) -> None:
    rec = await receiver(script=[500, 500])  # then 200
    subscribe(tenant, rec.url, ["call.started"])
    _, call_id = start_call(tenant, "alice", "bob")
    await rec.wait_for("call.started", status=200)
    await asyncio.sleep(2)  # a wrong extra retry would arrive in this window
    attempts = rec.of("call.started")
    assert [status for _, _, status in attempts] == [500, 500, 200]
    ids = {h["Sendsar-Event-Id"] for h, _, _ in attempts}
    assert len(ids) == 1  # the same event each time, for the receiver's de-duplication
    assert json.loads(attempts[-1][1])["call"]["id"] == call_id


async def test_slow_tenant_does_not_delay_another(new_tenant: Any, receiver: Any) -> None:
    slow_tenant, fast_tenant = new_tenant(), new_tenant()
    slow = await receiver(delay=4.0)
    fast = await receiver()
    subscribe(slow_tenant, slow.url, ["call.started"])
    subscribe(fast_tenant, fast.url, ["call.started"])
    for _ in range(3):
        start_call(slow_tenant, "alice", "bob")
    start_call(fast_tenant, "alice", "bob")
    await fast.wait_for("call.started", within=10)
    assert slow.received == []  # delivered while every slow request was still in flight


async def test_delivery_gives_up_after_the_retry_window(
    stack: Any, tenant: Tenant, receiver: Any
) -> None:
    rec = await receiver(script=[503] * 1000)
    subscribe(tenant, rec.url, ["call.started"])
    start_call(tenant, "alice", "bob")
    headers, _ = await rec.wait_for("call.started", status=503)
    event_id = headers["Sendsar-Event-Id"]
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        # Age the delivery past WEBHOOK_MAX_AGE_SECONDS (24 h) instead of waiting a day.
        db.execute(
            "UPDATE webhook_deliveries SET created_at = now() - interval '25 hours'"
            " WHERE event_id = %s",
            (event_id,),
        )
        deadline = time.monotonic() + 20
        row = None
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT status, attempts, last_error FROM webhook_deliveries WHERE event_id = %s",
                (event_id,),
            ).fetchone()
            if row and row[0] == "failed":
                break
            await asyncio.sleep(0.2)
    assert row is not None and row[0] == "failed" and row[1] >= 2 and row[2] == "HTTP 503"
    attempts = len(rec.of("call.started"))
    await asyncio.sleep(2)
    assert len(rec.of("call.started")) == attempts  # no more tries once failed
