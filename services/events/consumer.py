"""The one reconnecting reader of the call-event stream, used by the socket bridge and
the webhook intake alike. It owns the connection, (re)subscribing after a NATS restart
or a lost store, decoding, and the checks every reader needs; its user supplies a batch
handler and picks one of two ways to read:

- follow (durable=None; the socket bridge): every replica reads every event through an
  ephemeral push consumer (nats-py's ordered consumer) starting at the stream's end when
  the process starts, resumed from the last stream sequence it handled after any
  reconnect. NATS delivers events as they are stored, with no request per batch; a
  handler gets the first event and every one that arrived while the previous batch was
  handled. A sequence gap or missed heartbeats make nats-py recreate the consumer after
  the last event it delivered; a NATS reconnect makes this class subscribe again from
  the last one handled. Sequences at or below that are dropped (no history replayed to
  clients), a recreated stream is followed from its start, and event ids handled
  recently are dropped (an event the relay re-published after JetStream's
  de-duplication window reaches sockets once).
- share (durable="name"; the webhook intake): replicas share one durable pull consumer,
  each event goes to one of them; a batch is acknowledged only after its handler
  returned, and handed back (nak) when the handler raised.

Handlers get the events of a batch and, in the same order, the trace context each was
published with (`traceparent` header; None for every event while tracing is off, when
no header is even read).

Events are dropped, counted and logged, never handled, when undecodable or when their
tenant differs from their subject's tenant (NATS is not trusted blindly: a publisher on
one tenant's subject cannot reach another tenant's users or webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import datetime

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from opentelemetry.trace import Span, SpanKind
from prometheus_client import Counter, Gauge
from sendsar.calls.v1 import events_pb2

from services.common import tracing
from services.common.logging import log_fields
from services.common.settings import Settings
from services.events import types
from services.events.jetstream import connect

log = logging.getLogger(__name__)

# (events, the traceparent of each or None)
Handler = Callable[[list[events_pb2.CallEvent], list[str | None]], Awaitable[object]]

CONSUMED = Counter("events_consumed_total", "Call events handed to a handler", ["consumer"])
DROPPED = Counter(
    "events_dropped_total", "Call events dropped by a consumer", ["consumer", "reason"]
)  # undecodable | tenant_mismatch | replayed | duplicate
CONNECTED = Gauge("events_nats_connected", "1 while connected to NATS", ["consumer"])

ACK_WAIT_SECONDS = 30
CHECK_SECONDS = 5.0  # how often a consumer checks its consumer (share) or stream (follow)
INACTIVE_SECONDS = 60  # an ephemeral consumer nobody reads any more is removed by NATS
# follow: NATS sends a heartbeat after this long without events; two missed ones make
# nats-py recreate the consumer (a NATS restart without a reconnect noticed, say).
HEARTBEAT_SECONDS = 2.0
REMEMBER_IDS = 10_000

Subscription = JetStreamContext.PullSubscription | JetStreamContext.PushSubscription


def event_span(
    name: str, event: events_pb2.CallEvent, parent: str | None
) -> AbstractContextManager[Span | None]:
    """A block timed by a span continuing the event's trace: a no-op block while tracing
    is off or when the event carries no trace context (written outside any request)."""
    if parent is None:
        return tracing.NO_SPAN
    return tracing.child_span(
        name,
        parent,
        SpanKind.CONSUMER,
        {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "sendsar.tenant_id": event.tenant_id,
            "sendsar.event.id": event.id,
            "sendsar.event.type": event.type,
            "sendsar.call.id": event.call.id,
        },
    )


def decode(msg: Msg) -> tuple[events_pb2.CallEvent | None, str | None]:
    """The event, or None and the reason it is dropped."""
    event = events_pb2.CallEvent()
    try:
        event.ParseFromString(msg.data)
    except DecodeError:
        return None, "undecodable"
    if types.tenant_of(msg.subject) != event.tenant_id:
        return None, "tenant_mismatch"
    return event, None


class EventConsumer:
    def __init__(
        self,
        settings: Settings,
        name: str,
        handle: Handler,
        *,
        durable: str | None = None,
        batch: int = 100,
    ) -> None:
        self.settings = settings
        self.name = name
        self.handle = handle
        self.durable = durable
        self.batch = batch
        self.ready = asyncio.Event()  # set while subscribed (the bridge's readiness)
        self._nc: NATS | None = None
        self._resubscribe = asyncio.Event()
        # follow: held while a batch is handled, so a subscription is never replaced in
        # the middle of one (its events count as handled once it starts).
        self._handling = asyncio.Lock()
        self._last_seq = 0  # follow: highest stream sequence handled
        self._stream_created: datetime | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()

    # --- connection and subscription -----------------------------------------------------

    async def _connect(self) -> NATS:
        async def on_disconnected() -> None:
            CONNECTED.labels(self.name).set(0)
            log.warning("nats disconnected; reconnecting", extra=log_fields(consumer=self.name))

        async def on_reconnected() -> None:
            CONNECTED.labels(self.name).set(1)
            # The consumer may be gone with a restarted NATS: subscribe again, from where
            # this consumer is (follow) or to the durable consumer (share).
            self._resubscribe.set()

        nc = await connect(
            self.settings,
            self.name,
            on_disconnected=on_disconnected,
            on_reconnected=on_reconnected,
        )
        CONNECTED.labels(self.name).set(1)
        return nc

    async def _subscribe(self, nc: NATS) -> Subscription:
        # The stream is the relay's (it creates it and sets its limits and replicas);
        # until it exists this fails, and run() tries again.
        js = nc.jetstream()
        info = await js.stream_info(types.STREAM)
        if self.durable is not None:
            # Binds to the durable consumer, or creates it from the stream's start (events
            # published before the first replica started are not lost). Its replicas are
            # left to NATS, which gives a durable consumer as many as its stream has.
            return await js.pull_subscribe(
                types.SUBJECTS,
                durable=self.durable,
                stream=types.STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=ACK_WAIT_SECONDS,
                    max_deliver=-1,  # at least once: never give up on an event
                    deliver_policy=DeliverPolicy.ALL,
                ),
            )
        if self._stream_created is None:
            self._last_seq = info.state.last_seq  # first start: new events only
        elif info.created != self._stream_created:
            self._last_seq = 0  # a new stream: all of it is new to us
        self._stream_created = info.created
        return await self._follow(js)

    async def _follow(self, js: JetStreamContext) -> JetStreamContext.PushSubscription:
        """follow: a push subscription from the sequence after the last one handled."""
        held: list[Msg] = []
        subs: list[JetStreamContext.PushSubscription] = []  # the one below, once it exists

        async def deliver(msg: Msg) -> None:
            # nats-py calls this for one message after another. Messages that arrived
            # while the previous batch was handled are pending already: they join this
            # batch, which goes to the handler with the last of them (or once full).
            held.append(msg)
            if len(held) < self.batch and subs and subs[0].pending_msgs:
                return
            msgs = held.copy()
            held.clear()
            async with self._handling:
                await self._take(msgs)

        # Ordered: ack-less and in memory, with flow control and idle heartbeats; on a
        # sequence gap or two missed heartbeats nats-py recreates the consumer from the
        # stream sequence after the last message it delivered, on the same subscription.
        sub = await js.subscribe(
            types.SUBJECTS,
            stream=types.STREAM,
            cb=deliver,
            ordered_consumer=True,
            idle_heartbeat=HEARTBEAT_SECONDS,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._last_seq + 1,
                inactive_threshold=INACTIVE_SECONDS,
            ),
        )
        subs.append(sub)
        # nats-py counts "the last message it delivered" from 0, so a recreation before
        # this subscription's first event would start at sequence 1 and push the stream's
        # whole history through this process (_fresh drops it, but it costs a replay of
        # up to the stream's byte limit). Seeded with our position; if nats-py ever
        # renames this internal, only that cost comes back.
        jsi = getattr(sub._sub, "_jsi", None)
        if jsi is not None and isinstance(getattr(jsi, "_sseq", None), int):
            jsi._sseq = max(jsi._sseq, self._last_seq)
        return sub

    async def _check(self, nc: NATS, sub: Subscription) -> None:
        """Raises when the consumer (share) or the stream (follow) is gone; asks for a new
        consumer when the stream is new. An ordered consumer recreates itself, so follow
        checks the stream only (its consumer may be between two names)."""
        if self.durable is not None:
            await sub.consumer_info()
            return
        info = await nc.jetstream().stream_info(types.STREAM)
        if info.created != self._stream_created:
            self._resubscribe.set()

    # --- events --------------------------------------------------------------------------

    def _fresh(self, msg: Msg, event: events_pb2.CallEvent) -> bool:
        """follow: whether this replica has not handled the message's event yet."""
        seq = msg.metadata.sequence.stream
        if seq <= self._last_seq:
            DROPPED.labels(self.name, "replayed").inc()
            return False
        self._last_seq = seq
        # The outbox row id: an event to a large audience travels in parts that share
        # the event id, each part its own row (and NATS message id).
        key = (msg.headers or {}).get("Nats-Msg-Id") or event.id
        if key in self._seen:
            DROPPED.labels(self.name, "duplicate").inc()
            return False
        self._seen[key] = None
        if len(self._seen) > REMEMBER_IDS:
            self._seen.popitem(last=False)
        return True

    async def _take(self, msgs: list[Msg]) -> None:
        taken: list[Msg] = []
        batch: list[events_pb2.CallEvent] = []
        parents: list[str | None] = []
        traced = tracing.enabled()
        for msg in msgs:
            event, dropped = decode(msg)
            if event is None:
                DROPPED.labels(self.name, str(dropped)).inc()
                log.warning(
                    "call event dropped",
                    extra=log_fields(consumer=self.name, subject=msg.subject, reason=dropped),
                )
                if self.durable is not None:
                    await msg.term()  # redelivering it would never help
                elif msg.metadata.sequence.stream > self._last_seq:
                    self._last_seq = msg.metadata.sequence.stream
                continue
            if self.durable is None and not self._fresh(msg, event):
                continue
            taken.append(msg)
            batch.append(event)
            parents.append(msg.headers.get(tracing.TRACEPARENT) if traced and msg.headers else None)
        if not batch:
            return
        CONSUMED.labels(self.name).inc(len(batch))
        try:
            await self.handle(batch, parents)
        except Exception as exc:
            log.warning(
                "call events not handled",
                extra=log_fields(consumer=self.name, error=type(exc).__name__),
            )
            if self.durable is not None:  # hand the batch back for a later try
                for msg in taken:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=2)
                await asyncio.sleep(1)
            return
        if self.durable is not None:
            for msg in taken:
                await msg.ack()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Reads the stream for as long as the process lives."""
        while self._nc is None:
            try:
                self._nc = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "waiting for NATS",
                    extra=log_fields(consumer=self.name, error=type(exc).__name__),
                )
                await asyncio.sleep(0.5)
        nc = self._nc
        while True:
            sub: Subscription | None = None
            self._resubscribe.clear()
            try:
                sub = await self._subscribe(nc)
                self.ready.set()
                log.info("following call events", extra=log_fields(consumer=self.name))
                if isinstance(sub, JetStreamContext.PullSubscription):
                    await self._pull(nc, sub)
                else:
                    await self._watch(nc, sub)
            except asyncio.CancelledError:
                if isinstance(sub, JetStreamContext.PushSubscription):
                    sub = None  # close() drains it: events already delivered are handled
                raise
            except Exception as exc:  # consumer or stream gone, NATS away: subscribe again
                self.ready.clear()
                log.warning(
                    "event consumer resubscribing",
                    extra=log_fields(consumer=self.name, error=type(exc).__name__),
                )
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    # Between batches: messages delivered but not yet handled are dropped
                    # with it and come again from the next subscription.
                    async with self._handling:
                        with contextlib.suppress(Exception):
                            await sub.unsubscribe()

    async def _pull(self, nc: NATS, sub: JetStreamContext.PullSubscription) -> None:
        """share: fetches batches until something asks for a new subscription."""
        checked = time.monotonic()
        while not self._resubscribe.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=1)
            except TimeoutError:  # nothing new, or NATS reconnecting
                if time.monotonic() - checked > CHECK_SECONDS:
                    checked = time.monotonic()
                    await self._check(nc, sub)
                continue
            await self._take(msgs)

    async def _watch(self, nc: NATS, sub: JetStreamContext.PushSubscription) -> None:
        """follow: events arrive through the subscription's callback; meanwhile this checks
        the stream until something asks for a new subscription (a reconnect: the consumer
        may be gone with a restarted NATS, and resuming at once beats waiting for two
        missed heartbeats; a recreated stream: nats-py would wait at the old sequence)."""
        while not self._resubscribe.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resubscribe.wait(), CHECK_SECONDS)
                return
            await self._check(nc, sub)

    async def close(self) -> None:
        """Drains the connection: handlers of events already received finish first."""
        self.ready.clear()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)
        CONNECTED.labels(self.name).set(0)
