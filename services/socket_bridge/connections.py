"""Engine.IO connections the Socket.IO handlers never see: one that holds no connected
socket (it never sent the Socket.IO CONNECT, had it refused, or DISCONNECTed) is closed
after SOCKETIO_CONNECT_TIMEOUT_SECONDS, so idle websockets cannot fill the connection
cap; and one connection may send at most SOCKETIO_CONNECTS_PER_CONNECTION CONNECTs
(each runs the call.sync read), so a CONNECT/DISCONNECT loop on one websocket ends.

python-socketio exposes no hooks for the Engine.IO connection itself, so the server
class overrides its Engine.IO handlers (python-socketio is pinned in the lock files;
tests/integration/test_socketio_limits.py drives these paths with a raw client).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter as Tally
from collections.abc import Collection
from typing import Any

import socketio
from engineio import packet as eio_packet
from prometheus_client import Counter
from socketio import packet as sio_packet

from services.socket_bridge.engine import EngineSocket, LeanEngine, packet_frame

NAMESPACE = "/"

CLOSED = Counter(
    "socket_bridge_engine_connections_closed_total",
    "Engine.IO connections closed by the bridge",
    ["reason"],
)  # CONNECT_TIMEOUT | TOO_MANY_CONNECTS


class GuardedServer(socketio.AsyncServer):
    eio: LeanEngine

    def __init__(
        self,
        *,
        socketio_path: str,
        connect_timeout: float,
        connects_per_connection: int,
        **kw: Any,
    ) -> None:
        self.socketio_path = socketio_path  # before python-socketio builds its engine
        super().__init__(**kw)
        self.connect_timeout = connect_timeout
        self.connects_per_connection = connects_per_connection
        # Engine.IO connections without a connected socket: since when (monotonic).
        self.idle_since: dict[str, float] = {}
        self.connects: Tally[str] = Tally()

    def _engineio_server_class(self) -> Any:
        return functools.partial(LeanEngine, socketio_path=self.socketio_path)

    async def broadcast(
        self, event: str, data: Any, rooms: Collection[str], skip: Collection[str] = ()
    ) -> None:
        """`emit(event, data, to=rooms, skip_sid=skip)` for JSON data, without python-
        socketio's task per recipient: the packet is encoded and framed once and written
        to each lean socket as it is found (python-socketio's own sockets get it the usual
        way). Encoded here, not by a socketio Packet, which walks the whole payload looking
        for binary attachments (a 1,000-member call's event is ~40 KB of JSON)."""
        text = self.packet_class.json.dumps([event, data], separators=(",", ":"))
        message = eio_packet.Packet(eio_packet.MESSAGE, f"{sio_packet.EVENT}{text}")
        others = []
        for sid, eio_sid in self.manager.get_participants(NAMESPACE, list(rooms)):
            if sid in skip:
                continue
            sock = self.eio.sockets.get(eio_sid)
            if isinstance(sock, EngineSocket):
                if not sock.closed:
                    sock.write(packet_frame(message))
            else:
                others.append(eio_sid)
        if others:
            await asyncio.gather(*(self._send_eio_packet(e, message) for e in others))

    def connected(self, eio_sid: str) -> bool:
        sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        return sid is not None and bool(self.manager.is_connected(sid, NAMESPACE))

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        self.idle_since[eio_sid] = time.monotonic()
        await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        self.connects[eio_sid] += 1
        if self.connects[eio_sid] > self.connects_per_connection:
            await self._close(eio_sid, "TOO_MANY_CONNECTS")
            return
        # Not idle while its CONNECT is answered: under a reconnect storm the answer
        # (authentication, the sync read) may take longer than the timeout.
        since = self.idle_since.pop(eio_sid, None)
        await super()._handle_connect(eio_sid, namespace, data)
        if not self.connected(eio_sid) and eio_sid in self.connects:
            self.idle_since.setdefault(eio_sid, since or time.monotonic())

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: Any = None
    ) -> None:
        await super()._handle_disconnect(eio_sid, namespace, reason)
        self.idle_since.setdefault(eio_sid, time.monotonic())

    async def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        """A server-side disconnect (token expired, session revoked, ...) leaves the
        Engine.IO connection open for the client to close: it is idle from now on."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace or NAMESPACE)
        await super().disconnect(sid, namespace, ignore_queue)
        if eio_sid is not None and eio_sid in self.connects:
            self.idle_since.setdefault(eio_sid, time.monotonic())

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        self.idle_since.pop(eio_sid, None)
        self.connects.pop(eio_sid, None)

    async def close_idle(self) -> None:
        """Runs for the process's life: closes connections idle past the timeout."""
        period = min(1.0, self.connect_timeout / 4)
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.connect_timeout
            for eio_sid, since in list(self.idle_since.items()):
                if since > deadline:
                    continue
                if self.connected(eio_sid):  # connected meanwhile (a hook missed it)
                    self.idle_since.pop(eio_sid, None)
                else:
                    await self._close(eio_sid, "CONNECT_TIMEOUT")

    async def _close(self, eio_sid: str, reason: str) -> None:
        CLOSED.labels(reason).inc()
        self.idle_since.pop(eio_sid, None)
        engine_socket = self.eio.sockets.get(eio_sid)
        with contextlib.suppress(Exception):  # already closing
            await self.eio.disconnect(eio_sid)
        if engine_socket is not None and not isinstance(engine_socket, EngineSocket):
            # python-socketio's own transport only sends the close packet and leaves the
            # websocket to the client (until the ping timeout, 45 s); ending its writer
            # closes it now. (An EngineSocket closes its websocket itself.)
            await engine_socket.queue.put(None)
