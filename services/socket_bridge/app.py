"""Socket.IO bridge: authenticates session tokens and relays call events from NATS.

Each socket joins one private room per app user, "<tenantId>:<userId>", so every
device of a user receives the user's events and a user of another tenant with the same
user id never does. Each replica follows the stream itself (see follower.py) and emits
to its own sockets only; replicas share nothing.

One ASGI app serves Socket.IO at /socket.io/, GET /healthz (200 once the NATS
subscription exists) and Prometheus metrics at /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import socketio
from google.protobuf import json_format
from prometheus_client import Counter, Gauge, make_asgi_app
from sendsar.calls.v1 import events_pb2

from services.common.auth import verify_session
from services.common.errors import ServiceError
from services.common.logging import log_fields
from services.common.settings import Settings
from services.socket_bridge.follower import EventFollower

log = logging.getLogger(__name__)

SOCKETIO_PATH = "socket.io"

EMITTED = Counter("socket_bridge_events_emitted_total", "Call events emitted", ["type"])
CONNECTIONS = Gauge("socket_bridge_connections", "Open Socket.IO connections")
REFUSED = Counter("socket_bridge_connections_refused_total", "Refused Socket.IO connections")

ASGIScope = dict[str, Any]


def user_room(tenant_id: str, user_id: str) -> str:
    return f"{tenant_id}:{user_id}"


def refusal(message: str) -> socketio.exceptions.ConnectionRefusedError:
    """The client's connect_error handler gets {"message": ..., "data": {reason, message}}."""
    return socketio.exceptions.ConnectionRefusedError(
        message, {"reason": "UNAUTHENTICATED", "message": message}
    )


def event_json(event: events_pb2.CallEvent) -> dict[str, Any]:
    """The event as clients see it: lowerCamelCase JSON with the same fields as REST
    (Envoy prints fields without presence too, so `endReason` etc. are always there)."""
    return json_format.MessageToDict(event, always_print_fields_with_no_presence=True)


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Socket.IO's own loggers would print every packet (tokens, payloads): off.
        origins = settings.cors_origins
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            cors_allowed_origins="*" if origins == ["*"] else origins,
            logger=False,
            engineio_logger=False,
        )
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.follower = EventFollower(settings.NATS_URL, self.emit_event)
        self._task: asyncio.Task[None] | None = None

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            REFUSED.inc()
            raise refusal("auth.token (a session token) is required")
        try:
            principal = verify_session(token, self.settings.SESSION_SIGNING_KEY)
        except ServiceError as err:  # invalid or expired; the reason never names which key
            REFUSED.inc()
            raise refusal(err.message) from None
        user_id = principal.user_id
        assert user_id is not None  # sessions always name their user
        await self.sio.enter_room(sid, user_room(principal.tenant_id, user_id))
        CONNECTIONS.inc()
        log.debug("socket connected", extra=log_fields(tenantId=principal.tenant_id))

    async def on_disconnect(self, sid: str, *reason: Any) -> None:
        CONNECTIONS.dec()

    async def emit_event(self, event: events_pb2.CallEvent) -> None:
        """Emits the event under its type to every socket of every recipient."""
        if not event.recipient_user_ids:  # e.g. call.started: for webhooks only
            return
        rooms = [user_room(event.tenant_id, u) for u in event.recipient_user_ids]
        await self.sio.emit(event.type, event_json(event), to=rooms)
        EMITTED.labels(event.type).inc()
        log.debug(
            "event emitted",
            extra=log_fields(
                tenantId=event.tenant_id, callId=event.call.id, eventId=event.id, type=event.type
            ),
        )

    # --- process lifecycle (ASGI lifespan) --------------------------------------

    async def startup(self) -> None:
        self._task = asyncio.create_task(self.follower.run(), name="follower")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.follower.close()
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
            ok = bridge.follower.subscribed.is_set()
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
