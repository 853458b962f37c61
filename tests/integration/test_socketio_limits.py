"""Engine.IO connections at the bridge, through Envoy, driven by a raw Engine.IO v4
websocket client (what an attacker writes; python-socketio's client would not loop):

- a connection that never completes the Socket.IO CONNECT (or had it refused) is closed
  after SOCKETIO_CONNECT_TIMEOUT_SECONDS (5 s) instead of holding a place for an hour;
- CONNECT/DISCONNECT loops on one websocket end after SOCKETIO_CONNECTS_PER_CONNECTION
  (5) CONNECTs, each of which ran the call.sync read (issue 25, item 8);
- one app user's CONNECTs are rate limited across connections (RATE_LIMITED)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from devstack.procs import free_port, http_ok
from tests.conftest import Tenant
from tests.stack import Stack

CONNECT_TIMEOUT = 5.0  # SOCKETIO_CONNECT_TIMEOUT_SECONDS (default)
CONNECTS_PER_CONNECTION = 5  # SOCKETIO_CONNECTS_PER_CONNECTION (default)
SLACK = 10.0  # a loaded machine


class EngineSocket:
    """Engine.IO v4 over a websocket, Socket.IO packets by hand."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def packet(self, within: float = 15) -> str | None:
        """The next Socket.IO packet (pings answered on the way); None once closed."""
        while True:
            message = await self.ws.receive(timeout=within)
            if message.type != aiohttp.WSMsgType.TEXT:
                return None
            text = str(message.data)
            if text == "2":  # ping
                await self.ws.send_str("3")
            elif text.startswith("4"):
                return text[1:]

    async def connect(self, token: str) -> tuple[str, dict[str, Any]]:
        """Sends CONNECT: ("connected", {sid}) or ("refused", {message, data})."""
        await self.ws.send_str("40" + json.dumps({"token": token}))
        reply = await self.packet()
        assert reply is not None, "closed instead of answering the CONNECT"
        kind = {"0": "connected", "4": "refused"}[reply[0]]
        return kind, json.loads(reply[1:])

    async def disconnect(self) -> None:
        await self.ws.send_str("41")

    async def closed_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if await self.packet(within=deadline - time.monotonic()) is None:
                    return True
            except TimeoutError:
                return False
        return False


Open = Callable[[], Any]


@asynccontextmanager
async def engine_socket(url: str) -> AsyncIterator[EngineSocket]:
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        opened = await ws.receive(timeout=15)
        assert str(opened.data).startswith("0{"), opened  # the Engine.IO open packet
        yield EngineSocket(ws)


async def test_a_connection_without_a_connect_is_closed_after_the_timeout(stack: Stack) -> None:
    async with engine_socket(stack.rest) as sock:
        opened_at = time.monotonic()
        assert await sock.closed_within(CONNECT_TIMEOUT + SLACK)
        assert time.monotonic() - opened_at > CONNECT_TIMEOUT - 1  # the timeout, not at once


async def test_a_refused_connect_does_not_buy_time(stack: Stack) -> None:
    async with engine_socket(stack.rest) as sock:
        opened_at = time.monotonic()
        kind, reply = await sock.connect("not-a-session")
        assert (kind, reply["data"]["reason"]) == ("refused", "UNAUTHENTICATED")
        assert await sock.closed_within(CONNECT_TIMEOUT + SLACK)
        assert time.monotonic() - opened_at > CONNECT_TIMEOUT - 1


async def test_a_connected_socket_outlives_the_timeout(stack: Stack, tenant: Tenant) -> None:
    token = await asyncio.to_thread(tenant.session_token, "alice")
    async with engine_socket(stack.rest) as sock:
        assert (await sock.connect(token))[0] == "connected"
        assert not await sock.closed_within(CONNECT_TIMEOUT + 3)


async def test_connect_disconnect_loops_on_one_websocket_end(stack: Stack, tenant: Tenant) -> None:
    token = await asyncio.to_thread(tenant.session_token, "alice")
    syncs = 0
    async with engine_socket(stack.rest) as sock:
        for _ in range(CONNECTS_PER_CONNECTION):
            assert (await sock.connect(token))[0] == "connected"
            reply = await sock.packet()
            assert reply is not None and reply.startswith('2["call.sync"'), reply
            syncs += 1
            await sock.disconnect()
        # One CONNECT more: the connection is closed without a call.sync.
        await sock.ws.send_str("40" + json.dumps({"token": token}))
        assert await sock.closed_within(SLACK)
    assert syncs == CONNECTS_PER_CONNECTION


@pytest.fixture(scope="module")
def strict_bridge(stack: Stack) -> Any:
    """A bridge replica of its own whose per-user CONNECT budget is 4 (refilling 1 a
    minute), so the count is exact."""
    port = free_port()
    proc = stack.start_worker(
        "bridge-connect-limited",
        "services.socket_bridge",
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
        HTTP_PORT=str(port),
        SOCKETIO_CONNECTS_PER_USER_BURST="4",
        SOCKETIO_CONNECTS_PER_USER_PER_SECOND="0.016",
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


async def test_a_users_connects_are_rate_limited_across_connections(
    strict_bridge: str, tenant: Tenant
) -> None:
    alice = await asyncio.to_thread(tenant.session_token, "alice")
    bob = await asyncio.to_thread(tenant.session_token, "bob")
    outcomes = []
    for _ in range(3):  # a fresh websocket each time: the per-connection cap is not it
        async with engine_socket(strict_bridge) as sock:
            for _ in range(2):
                kind, reply = await sock.connect(alice)
                outcomes.append(kind if kind == "connected" else reply["data"]["reason"])
                if kind == "connected":
                    await sock.packet()  # call.sync
                    await sock.disconnect()
    assert outcomes == ["connected"] * 4 + ["RATE_LIMITED"] * 2, outcomes
    async with engine_socket(strict_bridge) as sock:  # another user's budget is whole
        assert (await sock.connect(bob))[0] == "connected"
