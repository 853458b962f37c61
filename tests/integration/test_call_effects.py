"""What follows a committed call change takes one path for every caller
(services/calls/effects.py): metrics and LiveKit work are the same whether the calls
service, a sweep or chat's member removal changed the call, and LiveKit is never called
while a transaction is open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from aiohttp import web

from services.calls.effects import CallEffects
from services.calls.media import Media
from services.common.db import open_pool
from services.common.settings import load_settings
from tests.conftest import Tenant
from tests.stack import Stack


def ended_total(stack: Stack, service: str, reason: str) -> float:
    """calls_ended_total{end_reason} of a service's (only) worker."""
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics").text
    line = f'calls_ended_total{{end_reason="{reason}"}} '
    return sum(float(s.split()[-1]) for s in text.splitlines() if s.startswith(line))


def test_a_call_ended_by_a_members_removal_is_counted(stack: Stack, tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    before = ended_total(stack, "chat", "hangup")
    with tenant.user("alice") as alice, tenant.user("bob") as bob, tenant.api() as api:
        call = alice.post(f"/chat/rooms/{room}/calls", json={}).json()["call"]["id"]
        assert bob.post(f"/chat/rooms/{room}/calls/{call}/accept").status_code == 200
        assert api.delete(f"/chat/rooms/{room}/members/bob").status_code == 200
        ended = alice.get(f"/chat/rooms/{room}/messages").json()["messages"][0]
    assert ended["parts"][0]["data"]["endReason"] == "hangup"
    assert ended_total(stack, "chat", "hangup") == before + 1


@pytest.fixture
async def slow_livekit() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """A LiveKit RoomService whose DeleteRoom takes until released: (its URL, an event
    set when a deletion arrived, the event that releases it)."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def delete_room(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(body=b"", content_type="application/protobuf")  # an empty reply

    app = web.Application()
    app.router.add_post("/twirp/livekit.RoomService/DeleteRoom", delete_room)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", arrived, release
    finally:
        release.set()
        await runner.cleanup()


async def test_a_room_deletion_retry_holds_no_transaction_or_lock(
    stack: Stack, scratch_db: str, slow_livekit: tuple[str, asyncio.Event, asyncio.Event]
) -> None:
    """While LiveKit takes its time over an ended call's room, the call's row is free and
    the retry's database session is not inside a transaction."""
    url, arrived, release = slow_livekit
    with psycopg.connect(scratch_db, autocommit=True) as db:
        db.execute(
            "INSERT INTO tenants (id, name, calls_enabled, max_participants,"
            " ring_timeout_seconds, default_type) VALUES ('t', 't', true, 8, 45, 'audio')"
        )
        db.execute("INSERT INTO rooms (id, tenant_id, name) VALUES ('r', 't', '')")
        db.execute(
            "INSERT INTO calls (id, tenant_id, room_id, type, mode, status, created_by,"
            " ring_timeout_seconds, livekit_room, livekit_cleanup_pending, ended_at)"
            " VALUES ('call_1', 't', 'r', 'audio', 'direct', 'ended', 'alice', 45, 'call_1',"
            " true, now() - interval '1 minute')"
        )
    settings = load_settings(
        **{
            **stack.env(),
            "DATABASE_URL": scratch_db,
            "LIVEKIT_URL": url,
            "LIVEKIT_API_TIMEOUT_SECONDS": "30",
            "SERVICE_NAME": "effects",
        }
    )
    media = Media(settings)
    pool = await open_pool(settings, max_size=2)
    effects = CallEffects(media, pool)
    try:
        retry = asyncio.create_task(effects.retry_room_deletions())
        await asyncio.wait_for(arrived.wait(), 5)  # LiveKit is deleting the room now
        with psycopg.connect(scratch_db, autocommit=True) as db:
            in_transaction = db.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE 'effects-%%' AND state LIKE '%%transaction%%'"
            ).fetchone()
            db.execute("SET lock_timeout = '100ms'")
            db.execute("SELECT 1 FROM calls WHERE id = 'call_1' FOR UPDATE")  # not locked
        assert in_transaction == (0,)
        release.set()
        await asyncio.wait_for(retry, 10)
        with psycopg.connect(scratch_db) as db:
            pending = db.execute("SELECT livekit_cleanup_pending FROM calls").fetchone()
        assert pending == (False,)
    finally:
        await media.close()
        await pool.close()
