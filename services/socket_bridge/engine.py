"""A lean Engine.IO websocket transport under python-socketio, for 10,000s of sockets.

python-socketio's own transport runs each websocket through uvicorn's ASGI websocket
(wsproto, an asyncio.Queue, a task), Engine.IO's socket (another queue, a writer task, a
reader task that waits on one more task per message, a ping task) and a WSGI-style
environ of every header: ~35 KiB and six tasks per idle socket, and every event encoded
and framed once per recipient socket (bench/README.md, round 5).

Here the common connection, a websocket opened with `transport=websocket` (the SDK,
socket.io-client with `transports: ['websocket']`), is one `EngineSocket`: uvicorn's
protocol object for the upgraded connection and Engine.IO's socket at once, with no task
and no queue. It parses frames itself (RFC 6455, no extensions), writes each packet
straight to the transport (a packet is framed once, however many sockets it goes to)
and is pinged by one heartbeat task for the whole process. python-socketio above it is
unchanged: the socket sits in `LeanEngine.sockets` and offers what Engine.IO's sockets
offer (`send`, `close`, `closed`, `session`, ...).

Everything else, a handshake this path does not take (long-polling and its upgrade to
websocket, another Engine.IO version, a refused origin, another path), goes to uvicorn's
wsproto protocol and python-socketio's own transport, unchanged, so their answers and
errors stay theirs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import struct
import time
from typing import Any
from urllib.parse import parse_qs

import engineio
from engineio import packet as eio_packet
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

log = logging.getLogger(__name__)

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CLOSE_NORMAL, _CLOSE_PROTOCOL, _CLOSE_TOO_BIG, _CLOSE_RESTART = 1000, 1002, 1009, 1012

# A client that stops reading while events keep coming (its link is gone but TCP is not
# yet): past this many unsent bytes its socket is closed rather than grow without bound.
# Generous: one event of a 1,000-member call is ~40 KB.
MAX_WRITE_BUFFER = 8 << 20
# A socket's messages handled at once: past this, its frames wait unread (and TCP pushes
# back on the client) rather than each becoming a task at once.
MAX_HANDLING = 8
# python-socketio's own sockets are checked for their ping timeout this often (walking
# every socket of the process to find them).
STOCK_CHECK_SECONDS = 5


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def packet_frame(pkt: eio_packet.Packet) -> bytes:
    """The websocket frame of an Engine.IO packet, built once per packet: an event
    emitted to 1,000 sockets is one Packet, framed here once and written 1,000 times."""
    cached: bytes | None = getattr(pkt, "ws_frame", None)
    if cached is None:
        encoded = pkt.encode()
        if isinstance(encoded, str):
            cached = frame(_TEXT, encoded.encode())
        else:
            cached = frame(_BINARY, bytes(encoded))
        pkt.ws_frame = cached
    return cached


_PING_FRAME = frame(_TEXT, b"2")


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def _valid_key(key: str) -> bool:
    """A Sec-WebSocket-Key is 16 bytes in base64 (RFC 6455 4.2.1)."""
    try:
        return len(base64.b64decode(key.encode(), validate=True)) == 16
    except ValueError:
        return False


class Handshake:
    """An upgrade request as uvicorn hands it over (its head, re-serialized)."""

    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" "), "", ""][:3]
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()

    def environ(self, peer: Any) -> dict[str, Any]:
        """What python-socketio keeps for the socket and gives its connect handler: the
        request line and the address, not every header (the bridge reads none)."""
        return {
            "REQUEST_METHOD": self.method,
            "PATH_INFO": self.path,
            "QUERY_STRING": self.query,
            "REMOTE_ADDR": peer[0] if isinstance(peer, tuple) else "",
        }


class EngineSocket(asyncio.Protocol):
    """uvicorn's protocol for an upgraded connection; on the lean path also its Engine.IO
    socket, with the attributes and coroutines of Engine.IO's sockets that python-socketio
    and `engineio.AsyncServer` use."""

    engine: LeanEngine  # set on the class that `LeanEngine.protocol()` makes
    # Engine.IO's socket state that never changes here.
    connected = True
    upgraded = True
    upgrading = False

    __slots__ = (
        "awaiting_pong",
        "buffer",
        "closed",
        "closing",
        "delegate",
        "fragments",
        "fragments_opcode",
        "handling",
        "paused",
        "session_data",
        "sid",
        "transport",
        "uvicorn",
    )

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        # uvicorn's arguments, kept for a hand-over and for its connection set.
        self.uvicorn: tuple[Any, Any, Any] = (config, server_state, app_state)
        self.transport: asyncio.Transport | None = None
        self.delegate: asyncio.Protocol | None = None
        self.buffer = b""
        self.fragments: list[bytes] | None = None
        self.fragments_opcode = 0
        self.handling = 0  # its messages being handled now
        self.paused = False  # reading paused until fewer are
        self.awaiting_pong = False
        self.sid = ""
        self.closing = False
        self.closed = False
        self.session_data: dict[str, Any] | None = None

    # --- Engine.IO's socket, as python-socketio and engineio.AsyncServer use it --------

    @property
    def session(self) -> dict[str, Any]:
        if self.session_data is None:
            self.session_data = {}
        return self.session_data

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        self.session_data = value

    async def send(self, pkt: eio_packet.Packet) -> None:
        self.write(packet_frame(pkt))

    async def check_ping_timeout(self) -> bool:
        return not self.closed  # the heartbeat's job (LeanEngine.heartbeat)

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """As Engine.IO's: the disconnect handler, then the CLOSE packet (unless the
        client is gone); and the websocket is closed too (Engine.IO's leaves that to the
        client)."""
        if self.closed or self.closing:
            return
        self.closing = True
        try:
            await self.engine._trigger_event(
                "disconnect", self.sid, reason or self.engine.reason.SERVER_DISCONNECT
            )
        finally:
            if not abort:
                self.write(packet_frame(eio_packet.Packet(eio_packet.CLOSE)))
            self.closed = True
            self.engine.forget(self)
            self._end(_CLOSE_NORMAL)

    # --- uvicorn's protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)
        elif self.sid:
            if self.closed or self.transport is None or self.transport.is_closing():
                return  # the rest of a connection being closed
            self.buffer += data
            self._frames()
        else:
            self._handshake(data)

    def eof_received(self) -> bool | None:
        return self.delegate.eof_received() if self.delegate is not None else None

    def pause_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.pause_writing()

    def resume_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
            return
        self.uvicorn[1].connections.discard(self)
        if self.sid and not self.closing:
            self.engine.spawn(
                self.close(wait=False, abort=True, reason=self.engine.reason.TRANSPORT_CLOSE)
            )

    def shutdown(self) -> None:
        """uvicorn's, at SIGTERM: the client reconnects (to another replica)."""
        self._end(_CLOSE_RESTART)

    # --- the handshake -------------------------------------------------------------------

    def _handshake(self, head: bytes) -> None:
        request = Handshake(head)
        key = request.headers.get("sec-websocket-key", "")
        if not (self.engine.takes(request) and _valid_key(key)):
            self._hand_over(head)
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.uvicorn[1].connections.add(self)  # uvicorn's shutdown closes it
        self.sid = self.engine.generate_id()
        self.engine.spawn(self._open(request.environ(self.transport.get_extra_info("peername"))))

    def _hand_over(self, head: bytes) -> None:
        """Not ours: uvicorn's own websocket protocol serves it from the start."""
        assert self.transport is not None
        config, server_state, app_state = self.uvicorn
        self.delegate = WSProtocol(config=config, server_state=server_state, app_state=app_state)
        self.delegate.connection_made(self.transport)
        self.delegate.data_received(head)

    async def _open(self, environ: dict[str, Any]) -> None:
        engine = self.engine
        engine.sockets[self.sid] = self
        accepted = await engine._trigger_event("connect", self.sid, environ)
        if accepted is not None and accepted is not True:
            engine.forget(self)
            self.closed = True
            self._end(_CLOSE_NORMAL)
            return
        self.write(packet_frame(engine.open_packet(self.sid)))
        engine.watch(self)

    # --- frames --------------------------------------------------------------------------

    def _handled(self, _: asyncio.Task[Any]) -> None:
        self.handling -= 1
        if self.paused and self.handling < MAX_HANDLING and not self.closed:
            self.paused = False
            self._frames()  # what waited in the buffer
            if not self.paused and self.transport is not None:
                self.transport.resume_reading()

    def _frames(self) -> None:
        buf = self.buffer
        at = 0
        while len(buf) - at >= 2:
            if self.handling >= MAX_HANDLING:  # the client sends faster than it is served
                if not self.paused and self.transport is not None:
                    self.paused = True
                    self.transport.pause_reading()
                break
            first, second = buf[at], buf[at + 1]
            n, start = second & 0x7F, at + 2
            if n == 126:
                if len(buf) - at < 4:
                    break
                n, start = struct.unpack_from("!H", buf, at + 2)[0], at + 4
            elif n == 127:
                if len(buf) - at < 10:
                    break
                n, start = struct.unpack_from("!Q", buf, at + 2)[0], at + 10
            if n > self.engine.max_http_buffer_size:
                self._fail(_CLOSE_TOO_BIG)
                return
            if not second & 0x80:  # clients must mask (RFC 6455 5.1)
                self._fail(_CLOSE_PROTOCOL)
                return
            end = start + 4 + n
            if len(buf) < end:
                break
            payload = _unmask(buf[start + 4 : end], buf[start : start + 4])
            at = end
            if not self._frame(first, payload):
                return
        self.buffer = buf[at:] if at else buf

    def _frame(self, first: int, payload: bytes) -> bool:
        """Handles one frame; False once the connection is being closed."""
        opcode, final = first & 0x0F, bool(first & 0x80)
        if first & 0x70:  # no extension was negotiated: no RSV bit may be set
            self._fail(_CLOSE_PROTOCOL)
            return False
        if opcode == _PING:
            self.write(frame(_PONG, payload))
        elif opcode == _CLOSE:
            self._end(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else _CLOSE_NORMAL)
            return False
        elif opcode in (_TEXT, _BINARY, _CONT):
            return self._data(opcode, final, payload)
        elif opcode != _PONG:
            self._fail(_CLOSE_PROTOCOL)
            return False
        return True

    def _data(self, opcode: int, final: bool, payload: bytes) -> bool:
        if opcode != _CONT:
            if self.fragments is not None:  # a new message inside a fragmented one
                self._fail(_CLOSE_PROTOCOL)
                return False
            if final:
                self._message(opcode, payload)
                return True
            self.fragments, self.fragments_opcode = [payload], opcode
            return True
        if self.fragments is None:
            self._fail(_CLOSE_PROTOCOL)
            return False
        self.fragments.append(payload)
        if sum(len(f) for f in self.fragments) > self.engine.max_http_buffer_size:
            self._fail(_CLOSE_TOO_BIG)
            return False
        if final:
            data, self.fragments = b"".join(self.fragments), None
            self._message(self.fragments_opcode, data)
        return True

    def _message(self, opcode: int, payload: bytes) -> None:
        if opcode == _TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(_CLOSE_PROTOCOL)
                return
            if text == "3":  # PONG, every 25 s from every socket: no Packet
                self.awaiting_pong = False
                return
            pkt = eio_packet.Packet(encoded_packet=text)
        else:
            pkt = eio_packet.Packet(encoded_packet=payload)
        if pkt.packet_type == eio_packet.MESSAGE:
            self.handling += 1
            task = self.engine.spawn(self.engine._trigger_event("message", self.sid, pkt.data))
            task.add_done_callback(self._handled)
        elif pkt.packet_type == eio_packet.CLOSE:
            self.engine.spawn(
                self.close(wait=False, abort=True, reason=self.engine.reason.CLIENT_DISCONNECT)
            )
        elif pkt.packet_type == eio_packet.PONG:
            self.awaiting_pong = False

    # --- writing and ending ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("closing a socket whose client does not read")
            self._fail(_CLOSE_NORMAL)
            return
        transport.write(data)

    def _end(self, code: int) -> None:
        """A close frame after whatever is queued, then the TCP connection."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame(_CLOSE, code.to_bytes(2, "big")))
            transport.close()

    def _fail(self, code: int) -> None:
        self._end(code)
        if self.transport is not None:
            self.transport.abort()


class LeanEngine(engineio.AsyncServer):
    """Engine.IO's server with `EngineSocket`s beside its own: `protocol()` is uvicorn's
    websocket protocol class; `heartbeat()` pings every lean socket every
    `ping_interval` seconds and closes one that did not answer the previous ping."""

    def __init__(self, *, socketio_path: str, **kw: Any) -> None:
        # Engine.IO's own monitor walks every socket, one timed wait each, every
        # ping_timeout; `heartbeat` walks a slice of the sockets a second instead.
        super().__init__(monitor_clients=False, **kw)
        self.path = "/" + socketio_path.strip("/") + "/"
        self.slots: list[set[EngineSocket]] = [
            set() for _ in range(max(1, int(self.ping_interval)))
        ]
        self.tick = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    def protocol(self) -> type[EngineSocket]:
        return type("BoundEngineSocket", (EngineSocket,), {"__slots__": (), "engine": self})

    def takes(self, request: Handshake) -> bool:
        """A new Engine.IO v4 connection on the websocket transport, from an allowed
        origin; everything else is python-socketio's own business."""
        if request.method != "GET" or not (request.path + "/").startswith(self.path):
            return False
        if request.headers.get("sec-websocket-version") != "13":
            return False
        query = parse_qs(request.query)
        if query.get("EIO") != ["4"] or query.get("transport") != ["websocket"] or "sid" in query:
            return False
        return self.origin_allowed(request.headers)

    def origin_allowed(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if self.cors_allowed_origins == [] or not origin:
            return True
        environ = {
            "HTTP_ORIGIN": origin,
            "HTTP_HOST": headers.get("host", ""),
            "wsgi.url_scheme": headers.get("x-forwarded-proto", "http"),
        }
        for name in ("x-forwarded-proto", "x-forwarded-host"):
            if name in headers:
                environ["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        allowed = self._cors_allowed_origins(environ)
        return allowed is None or origin in allowed

    def open_packet(self, sid: str) -> eio_packet.Packet:
        return eio_packet.Packet(
            eio_packet.OPEN,
            {
                "sid": sid,
                "upgrades": [],
                "pingTimeout": int(self.ping_timeout * 1000),
                "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
                "maxPayload": self.max_http_buffer_size,
            },
        )

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self.tasks.discard)
        return task

    def watch(self, sock: EngineSocket) -> None:
        """Pinged first a whole interval from now (the slot just pinged)."""
        self.slots[(self.tick - 1) % len(self.slots)].add(sock)

    def forget(self, sock: EngineSocket) -> None:
        if self.sockets.get(sock.sid) is sock:
            del self.sockets[sock.sid]
        for slot in self.slots:
            slot.discard(sock)

    async def _check_stock_sockets(self) -> None:
        """What Engine.IO's own monitor did for its sockets (long-polling ones): drop the
        closed, close those past their ping timeout."""
        for sid, other in list(self.sockets.items()):
            if isinstance(other, EngineSocket):
                continue
            if other.closed:
                self.sockets.pop(sid, None)
            elif not other.closing:
                with contextlib.suppress(Exception):
                    await other.check_ping_timeout()

    async def heartbeat(self) -> None:
        """Runs for the process's life: `beat()` once a second."""
        while True:
            started = time.monotonic()
            self.beat()
            if self.tick % STOCK_CHECK_SECONDS == 0:
                await self._check_stock_sockets()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    def beat(self) -> None:
        """The next slot of lean sockets: each is pinged, or closed if it did not answer
        the previous ping (an interval ago)."""
        slot = self.slots[self.tick % len(self.slots)]
        self.tick += 1
        for sock in list(slot):
            if sock.closed or sock.closing:
                slot.discard(sock)
            elif sock.awaiting_pong:
                self.spawn(sock.close(wait=False, reason=self.reason.PING_TIMEOUT))
            else:
                sock.awaiting_pong = True
                sock.write(_PING_FRAME)
