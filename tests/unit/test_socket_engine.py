"""The bridge's lean Engine.IO websocket transport (services/socket_bridge/engine.py),
in-process over a fake transport: which handshakes it takes and which it hands to
uvicorn's own protocol, the frames it parses (masked, split, fragmented, bad), the
Engine.IO packets it sends and receives, its heartbeat, and how it closes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from engineio import packet as eio_packet
from uvicorn.config import Config
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

from services.socket_bridge.engine import (
    MAX_HANDLING,
    MAX_WRITE_BUFFER,
    EngineSocket,
    LeanEngine,
    packet_frame,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()
ORIGIN = "https://app.example.com"


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False
        self.aborted = False
        self.buffered = 0
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def set_protocol(self, protocol: Any) -> None:
        pass


def head(target: str = "/socket.io/?EIO=4&transport=websocket", **headers: str) -> bytes:
    fields = {
        "host": "bridge",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(
    payload: bytes, opcode: int = 0x1, final: bool = True, mask: bytes | None = b"\x37\xfa\x21\x3d"
) -> bytes:
    n = len(payload)
    first = (0x80 if final else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if n < 126:
        out = bytes((first, masked | n))
    elif n < 1 << 16:
        out = struct.pack("!BBH", first, masked | 126, n)
    else:
        out = struct.pack("!BBQ", first, masked | 127, n)
    if mask is None:
        return out + payload
    return out + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each server frame after the 101 response."""
    data = data[data.index(b"\r\n\r\n") + 4 :] if data.startswith(b"HTTP/") else data
    frames, at = [], 0
    while at < len(data):
        first, n = data[at], data[at + 1] & 0x7F
        at += 2
        if n == 126:
            n, at = struct.unpack_from("!H", data, at)[0], at + 2
        elif n == 127:
            n, at = struct.unpack_from("!Q", data, at)[0], at + 8
        frames.append((first & 0x0F, bytes(data[at : at + n])))
        at += n
    return frames


def texts(transport: FakeTransport) -> list[str]:
    return [p.decode() for op, p in server_frames(bytes(transport.out)) if op == 0x1]


class Harness:
    """A LeanEngine with recording handlers, and sockets over fake transports."""

    def __init__(self, **engine_options: Any) -> None:
        self.engine = LeanEngine(socketio_path="socket.io", async_mode="asgi", **engine_options)
        self.events: list[tuple[str, Any]] = []
        self.refuse = False
        self.state = SimpleNamespace(connections=set(), tasks=set(), default_headers=[])

        async def connect(sid: str, environ: dict[str, Any]) -> bool | None:
            self.events.append(("connect", environ))
            return False if self.refuse else None

        async def message(sid: str, data: Any) -> None:
            self.events.append(("message", data))

        async def disconnect(sid: str, reason: str) -> None:
            self.events.append(("disconnect", reason))

        self.engine.on("connect", connect)
        self.engine.on("message", message)
        self.engine.on("disconnect", disconnect)

    async def open(self, request: bytes | None = None) -> tuple[EngineSocket, FakeTransport]:
        config = Config(app=_app, ws_per_message_deflate=False)
        sock = self.engine.protocol()(config=config, server_state=self.state, app_state={})
        transport = FakeTransport()
        sock.connection_made(transport)  # type: ignore[arg-type]
        sock.data_received(request or head())
        await settle()
        return sock, transport


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_websocket_transport_connection_is_opened_lean() -> None:
    h = Harness()
    sock, transport = await h.open()
    response = bytes(transport.out).split(b"\r\n\r\n")[0].decode()
    accept = base64.b64encode(
        hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert response.startswith("HTTP/1.1 101 ")
    assert f"Sec-WebSocket-Accept: {accept}" in response
    assert "Sec-WebSocket-Extensions" not in response  # no permessage-deflate
    [opened] = texts(transport)
    assert opened.startswith("0")
    assert json.loads(opened[1:]) == {
        "sid": sock.sid,
        "upgrades": [],
        "pingTimeout": 20000,
        "pingInterval": 25000,
        "maxPayload": 1_000_000,
    }
    assert h.engine.sockets[sock.sid] is sock
    assert h.engine.transport(sock.sid) == "websocket"
    kind, environ = h.events[0]
    assert kind == "connect"
    assert environ["QUERY_STRING"] == "EIO=4&transport=websocket"
    assert environ["REMOTE_ADDR"] == "192.0.2.7"
    assert sock in h.state.connections  # uvicorn's shutdown reaches it


@pytest.mark.parametrize(
    "request_head",
    [
        head("/socket.io/?EIO=4&transport=polling"),  # long-polling's upgrade path
        head("/socket.io/?EIO=4&transport=websocket&sid=abc"),  # an upgrade
        head("/socket.io/?EIO=3&transport=websocket"),  # another protocol version
        head("/other/?EIO=4&transport=websocket"),  # not Socket.IO
        head(sec_websocket_key="short"),
        head(sec_websocket_version="8"),
        head(origin="https://evil.example.com"),
    ],
)
async def test_other_handshakes_go_to_uvicorns_own_protocol(request_head: bytes) -> None:
    h = Harness(cors_allowed_origins=[ORIGIN])
    sock, transport = await h.open(request_head)
    assert isinstance(sock.delegate, WSProtocol)
    assert not sock.sid and not h.engine.sockets and not h.events
    assert not transport.out.startswith(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade")


async def test_an_allowed_origin_is_served_lean() -> None:
    h = Harness(cors_allowed_origins=[ORIGIN])
    sock, _ = await h.open(head(origin=ORIGIN))
    assert sock.delegate is None and sock.sid


async def test_a_refused_engineio_connect_closes_the_websocket() -> None:
    h = Harness()
    h.refuse = True
    _, transport = await h.open()
    assert transport.closing and not h.engine.sockets
    assert server_frames(bytes(transport.out)) == [(0x8, (1000).to_bytes(2, "big"))]


async def test_frames_split_joined_fragmented_and_masked_become_messages() -> None:
    h = Harness()
    sock, _ = await h.open()
    connect = client_frame(b'40{"token":"t"}')
    sock.data_received(connect[:3])  # a frame split across reads
    sock.data_received(connect[3:] + client_frame(b"41"))  # two frames in one read
    sock.data_received(client_frame(b"42", final=False) + client_frame(b'["x"]', opcode=0x0))
    long_text = b"4" + b"a" * 70_000  # a 64-bit length
    sock.data_received(client_frame(long_text))
    await settle()
    messages = [data for kind, data in h.events if kind == "message"]
    assert messages == ['0{"token":"t"}', "1", '2["x"]', "a" * 70_000]


async def test_a_flood_of_messages_is_handled_a_few_at_a_time_in_order() -> None:
    h = Harness()
    sock, transport = await h.open()
    handling, most = 0, 0
    release = asyncio.Event()

    async def slow(sid: str, data: Any) -> None:
        nonlocal handling, most
        handling += 1
        most = max(most, handling)
        await release.wait()
        h.events.append(("message", data))
        handling -= 1

    h.engine.on("message", slow)
    sock.data_received(b"".join(client_frame(f"42[{i}]".encode()) for i in range(100)))
    await settle()
    assert most == MAX_HANDLING and not transport.reading  # the rest waits unread
    release.set()
    for _ in range(50):
        await settle()
    assert [d for k, d in h.events if k == "message"] == [f"2[{i}]" for i in range(100)]
    assert most == MAX_HANDLING and transport.reading


async def test_pings_are_answered_and_pongs_end_the_wait() -> None:
    h = Harness()
    sock, transport = await h.open()
    transport.out.clear()
    sock.data_received(client_frame(b"hi", opcode=0x9))
    assert server_frames(bytes(transport.out)) == [(0xA, b"hi")]
    sock.awaiting_pong = True
    sock.data_received(client_frame(b"3"))
    assert not sock.awaiting_pong


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(b"40", mask=None), 1002),  # clients must mask
        (client_frame(b"40", opcode=0x3), 1002),  # no such opcode
        (bytes((0xC1, 0x82)) + b"\0\0\0\0" + b"40", 1002),  # RSV1 without an extension
        (client_frame(b"x", opcode=0x0), 1002),  # a continuation of nothing
        (client_frame(b"\xff\xfe"), 1002),  # not UTF-8
        (struct.pack("!BBQ", 0x81, 0xFF, 2_000_000), 1009),  # over maxPayload
    ],
)
async def test_bad_frames_close_the_connection(frame: bytes, code: int) -> None:
    h = Harness()
    sock, transport = await h.open()
    transport.out.clear()
    sock.data_received(frame)
    assert transport.aborted
    assert server_frames(bytes(transport.out)) == [(0x8, code.to_bytes(2, "big"))]
    sock.connection_lost(None)
    await settle()
    assert ("disconnect", "transport close") in h.events
    assert not h.engine.sockets
    assert not any(kind == "message" for kind, _ in h.events)


async def test_a_close_frame_is_answered_and_ends_the_socket() -> None:
    h = Harness()
    sock, transport = await h.open()
    transport.out.clear()
    sock.data_received(client_frame((1001).to_bytes(2, "big"), opcode=0x8))
    assert server_frames(bytes(transport.out)) == [(0x8, (1001).to_bytes(2, "big"))]
    assert transport.closing
    sock.connection_lost(None)
    await settle()
    assert h.events[-1] == ("disconnect", "transport close")
    assert not h.engine.sockets and sock not in h.state.connections


async def test_an_engineio_close_packet_disconnects_and_closes_the_websocket() -> None:
    h = Harness()
    sock, transport = await h.open()
    sock.data_received(client_frame(b"1"))
    await settle()
    assert h.events[-1] == ("disconnect", "client disconnect")
    assert transport.closing and not h.engine.sockets


async def test_a_server_disconnect_sends_engineios_close_then_closes() -> None:
    h = Harness()
    sock, transport = await h.open()
    transport.out.clear()
    await h.engine.disconnect(sock.sid)
    assert h.events[-1] == ("disconnect", "server disconnect")
    assert server_frames(bytes(transport.out)) == [(0x1, b"1"), (0x8, (1000).to_bytes(2, "big"))]
    assert transport.closing and not h.engine.sockets


async def test_a_packet_is_framed_once_for_every_socket() -> None:
    h = Harness()
    (a, ta), (b, tb) = await h.open(), await h.open()
    message = eio_packet.Packet(eio_packet.MESSAGE, '2["call.invite",{"id":"evt_1"}]')
    await h.engine.send_packet(a.sid, message)
    await h.engine.send_packet(b.sid, message)
    assert texts(ta)[-1] == texts(tb)[-1] == '42["call.invite",{"id":"evt_1"}]'
    assert packet_frame(message) is packet_frame(message)


async def test_the_heartbeat_pings_and_closes_a_socket_that_does_not_answer() -> None:
    h = Harness(ping_interval=1)  # one slot: every beat is the socket's
    sock, transport = await h.open()
    silent, silent_transport = await h.open()
    for _ in range(3):
        h.engine.beat()
        sock.data_received(client_frame(b"3"))
        await settle()
    assert texts(transport).count("2") == 3
    assert h.engine.sockets.get(sock.sid) is sock
    assert texts(silent_transport)[1:] == ["2", "1"]  # one ping, then Engine.IO's close
    assert silent_transport.closing and silent.sid not in h.engine.sockets
    assert ("disconnect", "ping timeout") in h.events


async def test_a_client_that_does_not_read_is_closed_at_the_buffer_cap() -> None:
    h = Harness()
    sock, transport = await h.open()
    transport.buffered = MAX_WRITE_BUFFER + 1
    await h.engine.send(sock.sid, "x")
    assert transport.aborted


async def test_uvicorns_shutdown_closes_with_service_restart() -> None:
    h = Harness()
    sock, transport = await h.open()
    transport.out.clear()
    sock.shutdown()
    assert server_frames(bytes(transport.out)) == [(0x8, (1012).to_bytes(2, "big"))]
    assert transport.closing
