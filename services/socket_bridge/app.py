"""Socket.IO bridge: authenticates session tokens and relays call events from NATS.

Each socket joins one private room per app user, "<tenantId>:<userId>", so every
device of a user receives the user's events and a user of another tenant with the same
user id never does. Each replica follows the stream itself (services.events.consumer)
and emits to its own sockets only; replicas share nothing.

Sockets follow their tokens:
- on every (re)connect the socket first gets `call.sync` {calls}: the user's live calls,
  read from PostgreSQL; events for the user arriving meanwhile wait and follow it;
- when the session token expires the socket gets `socket.closing` {reason:
  TOKEN_EXPIRED} and is closed, so the client reconnects with a fresh token;
- a replica holds at most SOCKETS_MAX_PER_USER sockets per user and
  SOCKETS_MAX_PER_TENANT per tenant; one more is refused (TOO_MANY_SOCKETS);
- a user's CONNECTs are rate limited (RATE_LIMITED), each Engine.IO connection may send
  a few, and one without a connected socket is closed after a few seconds
  (services.socket_bridge.connections);
- a session whose API key is revoked is refused, and its open sockets get
  `socket.closing` {reason: SESSION_REVOKED} and are closed.

One ASGI app serves Socket.IO at /socket.io/, GET /healthz (200 once the NATS
subscription exists) and Prometheus metrics at /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from dataclasses import dataclass
from functools import partial
from typing import Any

import socketio
from google.protobuf import json_format
from prometheus_client import Counter, Gauge, Histogram, make_asgi_app
from sendsar.calls.v1 import events_pb2

from services.calls.queries import SyncReads
from services.common.auth import token_expiry
from services.common.db import connect_listener, create_engine
from services.common.errors import ServiceError
from services.common.interceptors import Authenticator
from services.common.logging import log_fields
from services.common.rate_limit import TokenBuckets
from services.common.settings import Settings
from services.events.consumer import EventConsumer, event_span
from services.socket_bridge.connections import GuardedServer
from services.socket_bridge.rooms import IndexedRooms

log = logging.getLogger(__name__)

SOCKETIO_PATH = "socket.io"
SYNC_EVENT = "call.sync"
CLOSING_EVENT = "socket.closing"

EMITTED = Counter("socket_bridge_events_emitted_total", "Call events emitted", ["type"])
CONNECTIONS = Gauge("socket_bridge_connections", "Open Socket.IO connections")
REFUSED = Counter(
    "socket_bridge_connections_refused_total", "Refused Socket.IO connections", ["reason"]
)  # UNAUTHENTICATED | TOO_MANY_SOCKETS | RATE_LIMITED
CLOSED = Counter(
    "socket_bridge_connections_closed_total", "Sockets closed by the bridge", ["reason"]
)  # TOKEN_EXPIRED | SYNC_FAILED | SESSION_REVOKED
SYNCS = Counter("socket_bridge_syncs_total", "call.sync events sent")
SYNC_READ_USERS = Histogram(
    "socket_bridge_sync_read_users",
    "Users per call.sync read (reads gathered under load)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)

# How often open sockets' sessions are checked against revoked API keys (a read only
# when a revocation may have happened: a NOTIFY, or no LISTEN connection).
REVOCATION_CHECK_SECONDS = 1.0

ASGIScope = dict[str, Any]


def user_room(tenant_id: str, user_id: str) -> str:
    return f"{tenant_id}:{user_id}"


def refusal(reason: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    """The client's connect_error handler gets {"message": ..., "data": {reason, message}}."""
    REFUSED.labels(reason).inc()
    return socketio.exceptions.ConnectionRefusedError(
        message, {"reason": reason, "message": message}
    )


def event_json(event: events_pb2.CallEvent) -> dict[str, Any]:
    """The event as clients see it: lowerCamelCase JSON with the same fields as REST
    (Envoy prints fields without presence too, so `endReason` etc. are always there).
    An invite's ring tokens are for the tenant's backend alone: one of them answers the
    call as its user, so no socket ever sees them."""
    if event.HasField("ring"):
        event = _without_ring(event)
    return json_format.MessageToDict(event, always_print_fields_with_no_presence=True)


def _without_ring(event: events_pb2.CallEvent) -> events_pb2.CallEvent:
    copy = events_pb2.CallEvent()
    copy.CopyFrom(event)
    copy.ClearField("ring")
    return copy


def _release(tally: Tally[Any], key: Any) -> None:
    tally[key] -= 1
    if tally[key] <= 0:
        del tally[key]


@dataclass(slots=True)
class Socket:
    tenant_id: str
    user_id: str
    api_key_id: str | None  # the API key that minted the session (None: minted before)
    # Closes the socket when its session token expires (a timer, not a task per socket).
    expiry: asyncio.TimerHandle | None = None

    @property
    def room(self) -> str:
        return user_room(self.tenant_id, self.user_id)


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Socket.IO's own loggers would print every packet (tokens, payloads): off.
        origins = settings.cors_origins
        self.sio = GuardedServer(
            socketio_path=SOCKETIO_PATH,
            client_manager=IndexedRooms(),
            connect_timeout=settings.SOCKETIO_CONNECT_TIMEOUT_SECONDS,
            connects_per_connection=settings.SOCKETIO_CONNECTS_PER_CONNECTION,
            async_mode="asgi",
            cors_allowed_origins="*" if origins == ["*"] else origins,
            logger=False,
            engineio_logger=False,
        )
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.consumer = EventConsumer(settings, "socket-bridge", self.emit_events)
        self.engine = create_engine(settings, pool_size=min(settings.DB_POOL_SIZE, 5))
        # LISTENing for revocations: verified keys are then cached (a reconnect storm reads
        # each tenant's key once, not once per socket) and open sockets are checked after
        # a revocation rather than every second.
        self.authenticator = Authenticator(
            self.engine, settings.SESSION_SIGNING_KEY, partial(connect_listener, settings)
        )
        self.sync_reads = SyncReads(self.engine, on_read=SYNC_READ_USERS.observe)
        # Every CONNECT runs the call.sync read: a user's CONNECTs are rate limited.
        self.connect_budget = TokenBuckets(
            settings.SOCKETIO_CONNECTS_PER_USER_PER_SECOND,
            settings.SOCKETIO_CONNECTS_PER_USER_BURST,
        )
        self.sockets: dict[str, Socket] = {}
        # The sockets whose call.sync is not out yet, each with the events held back for
        # it meanwhile: an event is checked against these few, not against every socket.
        self.syncing: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.per_user: Tally[tuple[str, str]] = Tally()
        self.per_tenant: Tally[str] = Tally()
        self.per_key: Tally[str] = Tally()  # the API keys that minted the open sockets' sessions
        self._tasks: list[asyncio.Task[None]] = []
        self._short: set[asyncio.Task[None]] = set()  # syncs and closes under way

    # --- connections ---------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise refusal("UNAUTHENTICATED", "auth.token (a session token) is required")
        try:
            principal = await self.authenticator.socket(token)
        except ServiceError as err:  # invalid, expired or revoked; never says which key
            raise refusal("UNAUTHENTICATED", err.message) from None
        user_id = principal.user_id
        assert user_id is not None  # sessions always name their user
        tenant_id = principal.tenant_id
        if not self.connect_budget.take(user_room(tenant_id, user_id)):
            raise refusal("RATE_LIMITED", "too many connects for this user; retry later")
        # Counted and taken with no await in between: one event loop, no race.
        if self.per_user[(tenant_id, user_id)] >= self.settings.SOCKETS_MAX_PER_USER:
            raise refusal(
                "TOO_MANY_SOCKETS",
                f"at most {self.settings.SOCKETS_MAX_PER_USER} sockets per user",
            )
        if self.per_tenant[tenant_id] >= self.settings.SOCKETS_MAX_PER_TENANT:
            raise refusal("TOO_MANY_SOCKETS", "the tenant's socket limit is reached")
        sock = Socket(tenant_id, user_id, principal.api_key_id)
        self.sockets[sid] = sock
        self.syncing[sid] = []
        self.per_user[(tenant_id, user_id)] += 1
        self.per_tenant[tenant_id] += 1
        if sock.api_key_id is not None:
            self.per_key[sock.api_key_id] += 1
        CONNECTIONS.inc()
        await self.sio.enter_room(sid, sock.room)
        # Verified above: exp is there and valid.
        sock.expiry = asyncio.get_running_loop().call_later(
            max(0.0, token_expiry(token) - time.time()), self._expire, sid
        )
        # After this handler returns, Socket.IO sends the CONNECT; the task then syncs.
        self._spawn(self._sync(sid, sock))
        log.debug("socket connected", extra=log_fields(tenantId=tenant_id))

    async def on_disconnect(self, sid: str, *reason: Any) -> None:
        sock = self.sockets.pop(sid, None)
        self.syncing.pop(sid, None)
        if sock is None:
            return
        CONNECTIONS.dec()
        _release(self.per_user, (sock.tenant_id, sock.user_id))
        _release(self.per_tenant, sock.tenant_id)
        if sock.api_key_id is not None:
            _release(self.per_key, sock.api_key_id)
        if sock.expiry is not None:
            sock.expiry.cancel()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._short.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._short.discard)

    def _expire(self, sid: str) -> None:
        if sid in self.sockets:
            self._spawn(
                self._close(
                    sid, "TOKEN_EXPIRED", "the session token expired; reconnect with a fresh one"
                )
            )

    async def _sync(self, sid: str, sock: Socket) -> None:
        """The socket's call.sync, first after its CONNECT, then the events held back."""
        try:
            calls = await self.sync_reads.live_calls(sock.tenant_id, sock.user_id)
            while not self.sio.manager.is_connected(sid, "/"):  # the CONNECT is on its way
                if sid not in self.sockets:
                    return
                await asyncio.sleep(0.01)
            await self.sio.emit(SYNC_EVENT, {"calls": calls}, to=sid)
            SYNCS.inc()
            # Events that came meanwhile, in order; new ones join the queue until it is
            # empty.
            held = self.syncing.get(sid, [])
            while held:
                event_type, data = held.pop(0)
                await self.sio.emit(event_type, data, to=sid)
            self.syncing.pop(sid, None)
        except Exception as exc:  # database away: the client reconnects and syncs later
            if sid not in self.sockets:
                return
            log.warning("call.sync failed", extra=log_fields(error=type(exc).__name__))
            await self._close(sid, "SYNC_FAILED", "the call state is unavailable; reconnect")

    async def close_revoked(self) -> None:
        """Runs for the process's life: sockets whose session's API key was revoked close."""
        seen: int | None = None
        while True:
            await asyncio.sleep(REVOCATION_CHECK_SECONDS)
            epoch = self.authenticator.revocation_epoch
            if not self.per_key or (epoch is not None and epoch == seen):
                continue
            try:
                revoked = await self.authenticator.revoked_among(set(self.per_key))
            except Exception as exc:  # the database away: checked again next round
                log.warning("revocation check failed", extra=log_fields(error=type(exc).__name__))
                continue
            seen = epoch
            if not revoked:
                continue
            for sid, sock in list(self.sockets.items()):
                if sock.api_key_id in revoked:
                    await self._close(
                        sid, "SESSION_REVOKED", "the API key that minted the session was revoked"
                    )

    async def _close(self, sid: str, reason: str, message: str) -> None:
        CLOSED.labels(reason).inc()
        with contextlib.suppress(Exception):
            await self.sio.emit(CLOSING_EVENT, {"reason": reason, "message": message}, to=sid)
        await self.sio.disconnect(sid)

    # --- events --------------------------------------------------------------------------

    async def emit_events(
        self, batch: list[events_pb2.CallEvent], parents: list[str | None]
    ) -> None:
        for event, parent in zip(batch, parents, strict=True):
            try:
                with event_span("socket-bridge emit", event, parent):
                    await self.emit_event(event)
            except Exception as exc:  # one bad emit must not stop the stream
                log.error(
                    "relaying a call event failed",
                    extra=log_fields(
                        tenantId=event.tenant_id,
                        callId=event.call.id,
                        eventId=event.id,
                        error=type(exc).__name__,
                    ),
                )

    async def emit_event(self, event: events_pb2.CallEvent) -> None:
        """Emits the event under its type to every socket of every recipient."""
        if not event.recipient_user_ids:  # e.g. call.started: for webhooks only
            return
        rooms = {user_room(event.tenant_id, u) for u in event.recipient_user_ids}
        data = event_json(event)
        syncing = [sid for sid, held in self.syncing.items() if self.sockets[sid].room in rooms]
        for sid in syncing:
            self.syncing[sid].append((event.type, data))
        await self.sio.broadcast(event.type, data, rooms, skip=syncing)
        EMITTED.labels(event.type).inc()
        log.debug(
            "event emitted",
            extra=log_fields(
                tenantId=event.tenant_id, callId=event.call.id, eventId=event.id, type=event.type
            ),
        )

    # --- process lifecycle (ASGI lifespan) -------------------------------------------------

    async def startup(self) -> None:
        self._tasks = [
            asyncio.create_task(self.consumer.run(), name="consumer"),
            asyncio.create_task(self.sio.close_idle(), name="close-idle"),
            asyncio.create_task(self.sio.eio.heartbeat(), name="heartbeat"),
            asyncio.create_task(self.close_revoked(), name="close-revoked"),
        ]

    async def shutdown(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.consumer.close()
        await self.authenticator.close()
        await self.engine.dispose()
        log.info("socket bridge stopped")


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> tuple[socketio.ASGIApp, Bridge]:
    bridge = Bridge(settings)
    metrics = make_asgi_app()

    async def other(scope: ASGIScope, receive: Any, send: Any) -> None:
        """Everything that is not Socket.IO: health and metrics."""
        if scope["type"] != "http":
            return  # a websocket outside /socket.io/: closed without accepting
        if scope["path"] == "/healthz":
            ok = bridge.consumer.ready.is_set()
            await _respond(send, 200 if ok else 503, b"ok" if ok else b"waiting for NATS")
        elif scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await _respond(send, 404, b"not found")

    app = socketio.ASGIApp(
        bridge.sio,
        other_asgi_app=other,
        socketio_path=SOCKETIO_PATH,
        on_startup=bridge.startup,
        on_shutdown=bridge.shutdown,
    )
    return app, bridge
