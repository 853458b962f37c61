"""A minimal Socket.IO (engine.io v4, websocket transport) client for load tests.

The protocol as the python-socketio and JS clients speak it, without their per-socket
machinery, so one load process can hold thousands of sockets and still time events to
the millisecond: "0{...}" opens, "40{auth}" connects the default namespace, "2"/"3"
are ping/pong, "42[event, data]" is an event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

OnEvent = Callable[[str, Any, float], None]


class Socket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, on_event: OnEvent) -> None:
        self.ws = ws
        self.on_event = on_event
        self.task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data: str = msg.data
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith("42"):
                arrived = time.monotonic()
                event, payload = json.loads(data[2:])
                self.on_event(event, payload, arrived)

    async def close(self) -> None:
        await self.ws.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def connect(
    http: aiohttp.ClientSession, base_url: str, token: str, on_event: OnEvent
) -> Socket:
    url = base_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    ws = await http.ws_connect(url, heartbeat=None, max_msg_size=0)
    opened = await ws.receive_str()
    if not opened.startswith("0"):
        raise RuntimeError(f"unexpected engine.io open: {opened[:80]}")
    await ws.send_str("40" + json.dumps({"token": token}))
    while True:
        reply = await ws.receive_str()
        if reply.startswith("40"):
            break
        if reply.startswith("44"):
            raise RuntimeError(f"socket refused: {reply[:200]}")
    sock = Socket(ws, on_event)
    sock.task = asyncio.create_task(sock._read())
    return sock
