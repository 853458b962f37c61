"""Follows the call-event stream: one ephemeral ordered JetStream consumer per process.

Every bridge replica needs every event (its own sockets may be any user's), so each
follows the stream independently, starting at the stream's end when it starts. nats-py's
ordered consumer recreates itself after a NATS restart from the last stream sequence it
saw; on top of that this class:

- starts at an explicit sequence (stream end + 1) and drops anything at or below the
  last sequence it handled, so a consumer reset before the first event (which nats-py
  would restart from sequence 1) never replays history to clients;
- notices when the stream itself was recreated (a NATS store wiped), and then follows
  the new stream from its start instead of waiting for sequences it will never reach;
- drops event ids it handled recently, so an event the outbox relay re-published after
  the JetStream de-duplication window reaches sockets once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime

import nats
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge
from sendsar.calls.v1 import events_pb2

from services.common import events
from services.common.jetstream import ensure_stream
from services.common.logging import log_fields

log = logging.getLogger(__name__)

Handler = Callable[[events_pb2.CallEvent], Awaitable[None]]

RECEIVED = Counter("socket_bridge_events_received_total", "Call events taken from NATS")
SKIPPED = Counter(
    "socket_bridge_events_skipped_total", "Call events not relayed", ["reason"]
)  # replayed | duplicate | undecodable
NATS_CONNECTED = Gauge("socket_bridge_nats_connected", "1 while connected to NATS")


class EventFollower:
    def __init__(
        self,
        nats_url: str,
        handle: Handler,
        *,
        name: str = "socket-bridge",
        heartbeat_seconds: float = 2.0,
        remember_ids: int = 10_000,
    ) -> None:
        self.nats_url = nats_url
        self.handle = handle
        self.name = name
        self.heartbeat_seconds = heartbeat_seconds
        self.remember_ids = remember_ids
        # Set once the subscription exists (the bridge's readiness).
        self.subscribed = asyncio.Event()
        self._last_seq = 0  # highest stream sequence handled
        self._stream_created: datetime | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._resubscribe = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._nc: NATS | None = None

    # --- connection ------------------------------------------------------------

    async def _connect(self) -> NATS:
        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra=log_fields(error=type(exc).__name__))

        async def on_disconnected() -> None:
            NATS_CONNECTED.set(0)
            log.warning("nats disconnected; reconnecting")

        async def on_reconnected() -> None:
            NATS_CONNECTED.set(1)
            log.info("nats reconnected")
            # The ordered consumer resumes by itself; run() checks the stream is the same.
            self._reconnected.set()

        nc = await nats.connect(
            self.nats_url,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # for as long as the process lives
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        NATS_CONNECTED.set(1)
        return nc

    async def _check_stream(self) -> None:
        nc = self._nc
        if nc is None or self._stream_created is None:
            return
        # Bounded retries: JetStream may take a moment to be ready after a restart.
        for _ in range(20):
            try:
                info = await nc.jetstream().stream_info(events.STREAM)
            except asyncio.CancelledError:
                raise
            except NotFoundError:
                break  # gone with NATS's store: resubscribing recreates it
            except Exception:
                await asyncio.sleep(0.5)
                continue
            if info.created == self._stream_created:
                return
            break
        log.warning("call stream recreated or unreachable; subscribing again")
        self._resubscribe.set()

    async def _subscribe(self, nc: NATS) -> JetStreamContext.PushSubscription:
        await ensure_stream(nc)
        js = nc.jetstream()
        info = await js.stream_info(events.STREAM)
        if self._stream_created is None:
            # First start: new events only.
            self._last_seq = info.state.last_seq
        elif info.created != self._stream_created:
            self._last_seq = 0  # a new stream: all of it is new to us
        self._stream_created = info.created
        sub = await js.subscribe(
            events.SUBJECTS,
            stream=events.STREAM,
            cb=self._on_msg,
            ordered_consumer=True,
            idle_heartbeat=self.heartbeat_seconds,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._last_seq + 1,
            ),
        )
        # nats-py restarts an ordered consumer at (last sequence it delivered + 1), which
        # is 0 + 1 until the first event; seed it so such a reset does not replay the
        # stream's whole history through this process (_on_msg would drop it anyway).
        jsi = getattr(sub._sub, "_jsi", None)
        if jsi is not None and hasattr(jsi, "_sseq"):
            jsi._sseq = self._last_seq
        return sub

    # --- events ----------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self._last_seq:
            SKIPPED.labels("replayed").inc()
            return
        self._last_seq = seq
        RECEIVED.inc()
        event = events_pb2.CallEvent()
        try:
            event.ParseFromString(msg.data)
        except DecodeError:
            SKIPPED.labels("undecodable").inc()
            log.warning("undecodable call event skipped", extra=log_fields(subject=msg.subject))
            return
        if event.id in self._seen:
            SKIPPED.labels("duplicate").inc()
            return
        self._seen[event.id] = None
        if len(self._seen) > self.remember_ids:
            self._seen.popitem(last=False)
        try:
            await self.handle(event)
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

    # --- lifecycle -------------------------------------------------------------

    async def run(self) -> None:
        """Follows the stream for as long as the process lives."""
        while True:
            sub: JetStreamContext.PushSubscription | None = None
            try:
                if self._nc is None or self._nc.is_closed:
                    self._nc = await self._connect()
                sub = await self._subscribe(self._nc)
                self._resubscribe.clear()
                self.subscribed.set()
                log.info("following call events", extra=log_fields(fromSeq=self._last_seq + 1))
                while not self._nc.is_closed and not self._resubscribe.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._reconnected.wait(), 5)
                    if self._reconnected.is_set():
                        self._reconnected.clear()
                        await self._check_stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("waiting for NATS", extra=log_fields(error=type(exc).__name__))
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    async def close(self) -> None:
        """Drains the connection: handlers of already received events finish first."""
        self.subscribed.clear()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)
        NATS_CONNECTED.set(0)
