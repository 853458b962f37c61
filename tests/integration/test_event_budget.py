"""One tenant cannot flood the shared event stream (shared/DESIGN.md "Events"; hardening
round 2): a call's events carry each ring token once, every tenant's event bytes are
budgeted, and a start over the budget is refused (429, scope "events") before it writes
anything, so another tenant's events that wait in the stream are never discarded to
make room for the flood."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web
from sendsar.calls.v1 import events_pb2

from tests.conftest import Tenant, create_tenant, error_reason
from tests.stack import Stack, new_workdir

MEMBERS = [f"u{i:04d}" for i in range(1000)]
STREAM_BYTES = 48 * 1024 * 1024
FLOOD = 120  # starts tried: ~60 MiB of events unbudgeted, more than the stream holds


@pytest.fixture(scope="module")
def small_stream() -> Iterator[Stack]:
    """A stack whose stream holds 48 MiB, with a tenant budget far below that."""
    s = Stack(
        workdir=new_workdir(),
        settings={
            "NATS_STREAM_MAX_BYTES": str(STREAM_BYTES),
            "EVENT_BYTES_BURST": str(4 * 1024 * 1024),
            "EVENT_BYTES_PER_SECOND": str(256 * 1024),
        },
    )
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver: (its URL, the events it got)."""
    got: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/hooks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hooks", got
    finally:
        await runner.cleanup()


def outbox_parts(stack: Stack, call: str, event_type: str) -> list[events_pb2.CallEvent]:
    with psycopg.connect(stack.database_url) as db:
        rows = db.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
    parts = [events_pb2.CallEvent.FromString(bytes(r[0])) for r in rows]
    return [p for p in parts if p.call.id == call and p.type == event_type]


def big_room(tenant: Tenant) -> str:
    return tenant.room(*MEMBERS)


def test_an_invite_to_a_thousand_carries_each_ring_token_once(stack: Stack, tenant: Tenant) -> None:
    room = big_room(tenant)
    with tenant.user(MEMBERS[0]) as caller:
        call = caller.post(f"/chat/rooms/{room}/calls", json={}).json()["call"]["id"]
    first, second = outbox_parts(stack, call, "call.invite")
    assert len(first.ring.tokens) == 999 and not first.HasField("part")
    assert not second.HasField("ring") and second.part == 1
    assert len(first.recipient_user_ids) + len(second.recipient_user_ids) == 999


async def test_a_flooding_tenant_is_refused_and_no_other_tenants_event_is_lost(
    small_stream: Stack, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    url, got = hooks
    quiet, flood = create_tenant(small_stream, "quiet"), create_tenant(small_stream, "flood")
    with quiet.api() as api:
        assert api.put("/v1/tenant/webhook", json={"url": url}).status_code == 200
    # The quiet tenant's events wait in the stream: nothing takes them to webhooks now.
    small_stream.procs["webhooks"].stop()
    room = quiet.room("alice", "bob")
    with quiet.user("alice") as alice:
        for _ in range(5):
            call = alice.post(f"/chat/rooms/{room}/calls", json={}).json()["call"]["id"]
            alice.post(f"/chat/rooms/{room}/calls/{call}/end", json={})
    with psycopg.connect(small_stream.database_url) as db:
        quiet_events = {
            r[0]
            for r in db.execute(
                "SELECT id FROM outbox WHERE tenant_id = %s", (quiet.tenant_id,)
            ).fetchall()
        }
    assert quiet_events

    big = big_room(flood)
    refused = 0
    async with httpx.AsyncClient(base_url=flood.rest, timeout=60) as http:
        caller = {"Authorization": f"Bearer {flood.session_token(MEMBERS[0])}"}
        key = {"Authorization": f"Bearer {flood.api_key}"}
        for _ in range(FLOOD):
            reply = await http.post(f"/chat/rooms/{big}/calls", json={}, headers=caller)
            if reply.status_code == 429:
                assert error_reason(reply) == "RATE_LIMITED"
                assert reply.json()["details"][0]["metadata"] == {"scope": "events"}
                refused += 1
                continue
            assert reply.status_code == 200, reply.text
            call = reply.json()["call"]["id"]
            ended = await http.post(f"/chat/rooms/{big}/calls/{call}/end", json={}, headers=key)
            assert ended.status_code == 200, ended.text
    assert refused > FLOOD // 2
    with psycopg.connect(small_stream.database_url) as db:
        written = db.execute(
            "SELECT sum(octet_length(payload)) FROM outbox WHERE tenant_id = %s",
            (flood.tenant_id,),
        ).fetchone()
    assert written is not None and written[0] < STREAM_BYTES // 2

    small_stream.start_grpc_service("webhooks", "services.webhooks")
    deadline = asyncio.get_running_loop().time() + 60
    while {e["id"] for e in got} < quiet_events:
        assert asyncio.get_running_loop().time() < deadline, "a quiet tenant's event was lost"
        await asyncio.sleep(0.5)
