"""A lean Socket.IO v5 / Engine.IO v4 client over a raw websocket, for holding 10,000s of
sockets from a few load processes.

One `asyncio.Protocol` per socket and no task, no reader coroutine and no HTTP client
object: the bridge under test is the bottleneck, not this. It speaks what browsers and
socket.io-client send:

- the websocket upgrade (RFC 6455), offering `permessage-deflate` as browsers do, and
  inflating the server's compressed messages when the server takes the offer;
- Engine.IO: `0{...}` opens, `2`/`3` are the server's ping and our pong;
- Socket.IO: `40{auth}` connects the default namespace (`40{sid}` / `44{error}` answer),
  `42[event, data]` is an event.

Frames we send are masked with an all-zero key (the payload is then unchanged): the
server cannot tell a key's randomness, which only matters against proxies a browser may
meet, and it saves a pass over every payload.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, cast

OnEvent = Callable[["Client", str, str, float], None]  # client, event, raw packet, arrival

_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: c2VuZHNhci1iZW5jaC0xNg==\r\nSec-WebSocket-Version: 13\r\n"
    "{extensions}\r\n"
)
_DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
_TEXT, _CLOSE, _PING, _PONG = 0x1, 0x8, 0x9, 0xA
_ZERO_MASK = b"\0\0\0\0"


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _ZERO_MASK + payload


class Client(asyncio.Protocol):
    """One socket. `connected` resolves at the CONNECT's answer (or fails with the
    refusal), `synced` at the first `call.sync` (with its arrival time); `lost` when the
    transport is gone."""

    def __init__(self, host: str, token: str, on_event: OnEvent, deflate: bool) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.token = token
        self.on_event = on_event
        self.offer_deflate = deflate
        self.inflater: Any = None  # zlib decompressor, once the server took the offer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.fragments: list[bytes] = []
        self.fragments_compressed = False
        self.connected: asyncio.Future[None] = loop.create_future()
        self.synced: asyncio.Future[float] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    # --- transport --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are no subclass of asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        request = _HANDSHAKE.format(
            path="/socket.io/?EIO=4&transport=websocket",
            host=self.host,
            extensions=_DEFLATE_OFFER if self.offer_deflate else "",
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(ConnectionError(f"closed before its call.sync: {exc!r}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded and not self._upgrade():
            return
        self._frames()

    def _upgrade(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        if not head.startswith("HTTP/1.1 101"):
            self._fail(ConnectionError(head.split("\r\n", 1)[0]))
            return False
        self.upgraded = True
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
                bits = 15
                for param in value.split(";"):
                    key, _, number = param.strip().partition("=")
                    if key == "server_max_window_bits" and number:
                        bits = int(number)
                self.inflater = zlib.decompressobj(-bits)
        return True

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            n, at = second & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + n:
                return
            payload = bytes(buf[at : at + n])  # server frames are never masked
            del buf[: at + n]
            self._frame(first, payload)

    def _frame(self, first: int, payload: bytes) -> None:
        opcode, final, compressed = first & 0x0F, bool(first & 0x80), bool(first & 0x40)
        if opcode == _PING:
            self._write(frame(_PONG, payload))
            return
        if opcode == _CLOSE:
            if self.transport is not None:
                self.transport.close()
            return
        if opcode == _PONG:
            return
        if opcode != 0:  # a new message (text; the bridge sends no binary)
            self.fragments, self.fragments_compressed = [], compressed
        self.fragments.append(payload)
        if not final:
            return
        data = b"".join(self.fragments)
        self.fragments = []
        if self.fragments_compressed:
            data = self.inflater.decompress(data + b"\0\0\xff\xff")
        self._packet(data.decode())

    # --- Engine.IO / Socket.IO ---------------------------------------------------------

    def _packet(self, text: str) -> None:
        if text == "2":
            self.send("3")
        elif text.startswith("42"):
            arrived = time.monotonic()
            event = text[4 : text.index('"', 4)]  # 42["<event>", ...]
            if event == "call.sync" and not self.synced.done():
                self.synced.set_result(arrived)
            self.on_event(self, event, text, arrived)
        elif text.startswith("0"):
            self.send("40" + json.dumps({"token": self.token}))
        elif text.startswith("40"):
            if not self.connected.done():
                self.connected.set_result(None)
        elif text.startswith("44"):
            self._fail(ConnectionRefusedError(text[2:200]))

    def send(self, text: str) -> None:
        self._write(frame(_TEXT, text.encode()))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, error: Exception) -> None:
        self._settle(error)
        if self.transport is not None:
            self.transport.close()

    def _settle(self, error: Exception) -> None:
        """Fails what is still pending (marked retrieved: a socket dropped on purpose
        fails futures nobody awaits)."""
        for future in (self.connected, self.synced):
            if not future.done():
                future.set_exception(error)
                future.exception()

    def drop(self) -> None:
        """Gone without a goodbye, as when a network or a replica goes away."""
        if self.transport is not None:
            self.transport.abort()


async def open_socket(
    host: str, port: int, token: str, on_event: OnEvent, *, deflate: bool = True
) -> Client:
    """A socket connected and synced (raises what refused or closed it)."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: Client(f"{host}:{port}", token, on_event, deflate), host, port
    )
    await client.synced
    return client
