"""Socket.IO test clients: real python-socketio clients through Envoy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import socketio

from services.events import types as events


class Device:
    """One app-user device: a socket that records every call event it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=True)
        self.events: list[tuple[str, dict[str, Any]]] = []
        for event_type in events.ALL:  # call.started too: a wrong emit fails
            self.sio.on(event_type, self._recorder(event_type))

    def _recorder(self, event_type: str) -> Callable[[dict[str, Any]], None]:
        def record(data: dict[str, Any]) -> None:
            self.events.append((event_type, data))

        return record

    async def connect(self, rest: str, token: str) -> Device:
        await self.sio.connect(
            rest,
            auth={"token": token},
            transports=["websocket"],
            socketio_path="socket.io",
            wait_timeout=10,
        )
        return self

    def of(self, event_type: str, call_id: str | None = None) -> list[dict[str, Any]]:
        return [
            d
            for t, d in self.events
            if t == event_type and (call_id is None or d["call"]["id"] == call_id)
        ]

    async def wait_for(
        self, event_type: str, call_id: str | None = None, within: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = self.of(event_type, call_id)
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"{self.name} did not receive {event_type} within {within}s: {self.events}"
        )

    async def close(self) -> None:
        await self.sio.disconnect()


async def settle(seconds: float = 1.5) -> None:
    """Time for anything wrongly routed to arrive before asserting absence."""
    await asyncio.sleep(seconds)
