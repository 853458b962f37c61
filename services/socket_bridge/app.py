"""Socket.IO bridge: authenticates session tokens and relays call events from NATS.

Every replica follows the JetStream stream with its own ordered consumer (new
events only) and emits each event to the private room of each recipient user, so
all of a user's sockets on this replica get it; other replicas do the same for
theirs. No state is shared between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import socketio
from google.protobuf import json_format
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from prometheus_client import Counter, Gauge, make_asgi_app
from sendsar.calls.v1 import events_pb2

from services.calls.relay import connect, ensure_stream
from services.common import events
from services.common.auth import verify_session
from services.common.errors import ServiceError
from services.common.logging import log_fields
from services.common.settings import Settings

log = logging.getLogger(__name__)

EMITTED = Counter("socket_events_emitted_total", "Events emitted to user rooms", ["type"])
CONNECTED = Gauge("socket_connections", "Open Socket.IO connections")


def user_room(tenant_id: str, user_id: str) -> str:
    return f"{tenant_id}:{user_id}"


def refused(reason: str, message: str) -> socketio.exceptions.ConnectionRefusedError:
    """The client's connect_error gets {"message": ..., "data": {"reason": ...}}."""
    return socketio.exceptions.ConnectionRefusedError(message, {"reason": reason})


def event_payload(event: events_pb2.CallEvent) -> dict[str, Any]:
    return json_format.MessageToDict(event)


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*", logger=False)
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        self.nc: NATS | None = None
        self.subscribed = asyncio.Event()

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise refused("UNAUTHENTICATED", "auth.token (a session token) is required")
        try:
            principal = verify_session(token, self.settings.SESSION_SIGNING_KEY)
        except ServiceError as err:
            raise refused(err.reason, err.message) from None
        assert principal.user_id is not None
        await self.sio.enter_room(sid, user_room(principal.tenant_id, principal.user_id))
        CONNECTED.inc()

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        CONNECTED.dec()

    async def relay(self, msg: Msg) -> None:
        event = events_pb2.CallEvent()
        try:
            event.ParseFromString(msg.data)
        except Exception:
            log.warning("undecodable event skipped", extra=log_fields(subject=msg.subject))
            return
        if not event.recipient_user_ids:
            return
        payload = event_payload(event)
        for user_id in event.recipient_user_ids:
            await self.sio.emit(event.type, payload, room=user_room(event.tenant_id, user_id))
        EMITTED.labels(event.type).inc()

    async def run(self) -> None:
        """Follows the stream for as long as the process lives; NATS restarts are survived."""
        while True:
            try:
                self.nc = await connect(self.settings.NATS_URL, "socket-bridge")
                await ensure_stream(self.nc)
                js = self.nc.jetstream()
                # Ordered consumer: recreated from the last seen sequence after a NATS restart.
                await js.subscribe(
                    events.SUBJECTS,
                    cb=self.relay,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.NEW,
                    idle_heartbeat=2.0,
                )
                self.subscribed.set()
                log.info("following call events")
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("waiting for NATS", extra=log_fields(error=type(exc).__name__))
                if self.nc is not None:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()


def create_app(settings: Settings) -> tuple[Any, Bridge]:
    bridge = Bridge(settings)
    metrics = make_asgi_app()

    async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Health and metrics beside Socket.IO on the same port."""
        if scope["type"] == "lifespan":
            await _lifespan(bridge, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/healthz":
            ok = bridge.subscribed.is_set()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if ok else 503,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok" if ok else b"waiting for NATS"})
            return
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return socketio.ASGIApp(bridge.sio, other_asgi_app=http, socketio_path="socket.io"), bridge


async def _lifespan(bridge: Bridge, receive: Any, send: Any) -> None:
    task: asyncio.Task[None] | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            task = asyncio.create_task(bridge.run())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await bridge.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
