"""Webhook intake: JetStream call events → webhook_deliveries rows.

A durable pull consumer ("webhooks") is shared by every dispatcher replica, so each
event is taken by one of them. A fetched batch becomes delivery rows in one
transaction, and only then is it acknowledged: a crash in between redelivers the batch,
and the unique (tenant_id, event_id) makes the second insert a no-op. From here on the
delivery lives in PostgreSQL, where retries are scheduled (see delivery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import nats
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from sendsar.calls.v1 import events_pb2
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import events
from services.common.db import transaction
from services.common.jetstream import ensure_stream
from services.common.logging import log_fields
from services.common.models import DELIVERIES, WEBHOOKS, new_id
from services.common.settings import Settings

log = logging.getLogger(__name__)

DURABLE = "webhooks"
BATCH = 100
ACK_WAIT_SECONDS = 30
CONSUMER_CHECK_SECONDS = 10.0

EVENTS_TAKEN = Counter(
    "webhook_events_total", "Call events seen by the webhook intake", ["outcome"]
)  # queued | not_subscribed | too_old | undecodable


def delivery_body(event: events_pb2.CallEvent) -> str:
    """The JSON body POSTed to the tenant: the event minus its socket recipients.

    Rendered once at intake and stored, so every retry sends (and signs) the same bytes.
    Fields without presence are printed, as in REST responses.
    """
    data = json_format.MessageToDict(event, always_print_fields_with_no_presence=True)
    data.pop("recipientUserIds", None)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def wanted(subscribed: list[str] | None, event_type: str) -> bool:
    """An endpoint's `events` filter: empty means every type."""
    return not subscribed or event_type in subscribed


class Intake:
    def __init__(
        self, settings: Settings, engine: AsyncEngine, on_queued: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.on_queued = on_queued  # wakes this replica's delivery loop

    async def record(self, batch: list[events_pb2.CallEvent]) -> int:
        """Queues deliveries for the events whose tenant subscribed to them; returns how many."""
        # An event older than the retry window would only be recorded as failed (e.g. a
        # consumer created after a long outage replaying the stream): not queued at all.
        oldest = datetime.now(UTC) - timedelta(seconds=self.settings.WEBHOOK_MAX_AGE_SECONDS)
        fresh = [e for e in batch if e.occurred_at.ToDatetime(tzinfo=UTC) >= oldest]
        EVENTS_TAKEN.labels("too_old").inc(len(batch) - len(fresh))
        if not fresh:
            return 0
        async with transaction(self.engine) as conn:
            endpoints = {
                row.tenant_id: row.events
                for row in await conn.execute(
                    select(WEBHOOKS.c.tenant_id, WEBHOOKS.c.events).where(
                        WEBHOOKS.c.tenant_id.in_({e.tenant_id for e in fresh})
                    )
                )
            }
            rows = [
                {
                    "id": new_id("whd"),
                    "tenant_id": e.tenant_id,
                    "event_id": e.id,
                    "event_type": e.type,
                    "body": delivery_body(e),
                }
                for e in fresh
                if e.tenant_id in endpoints and wanted(endpoints[e.tenant_id], e.type)
            ]
            if rows:
                await conn.execute(
                    pg_insert(DELIVERIES)
                    .values(rows)
                    .on_conflict_do_nothing(constraint="uq_webhook_deliveries_event")
                )
        EVENTS_TAKEN.labels("queued").inc(len(rows))
        EVENTS_TAKEN.labels("not_subscribed").inc(len(fresh) - len(rows))
        for row in rows:
            log.debug(
                "webhook queued",
                extra=log_fields(tenantId=row["tenant_id"], eventId=row["event_id"]),
            )
        if rows:
            self.on_queued()
        return len(rows)

    async def _connect(self) -> NATS:
        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra=log_fields(error=type(exc).__name__))

        return await nats.connect(
            self.settings.NATS_URL,
            name="webhooks",
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # for as long as the process lives
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=on_error,
        )

    async def _subscribe(self, nc: NATS) -> JetStreamContext.PullSubscription:
        await ensure_stream(nc)
        # Binds to the durable consumer when it exists; creates it otherwise (from the
        # stream's start, so events published before the first dispatcher are not lost).
        return await nc.jetstream().pull_subscribe(
            events.SUBJECTS,
            durable=DURABLE,
            stream=events.STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_SECONDS,
                max_deliver=-1,  # at least once: never give up on recording an event
                deliver_policy=DeliverPolicy.ALL,
            ),
        )

    async def _handle(self, msgs: list[Msg]) -> None:
        taken: list[Msg] = []
        decoded: list[events_pb2.CallEvent] = []
        for msg in msgs:
            event = events_pb2.CallEvent()
            try:
                event.ParseFromString(msg.data)
            except DecodeError:
                # Redelivering it would never help: drop it for good.
                EVENTS_TAKEN.labels("undecodable").inc()
                log.error("undecodable call event dropped", extra=log_fields(subject=msg.subject))
                await msg.term()
                continue
            taken.append(msg)
            decoded.append(event)
        try:
            await self.record(decoded)
        except Exception as exc:
            # Database trouble: hand the batch back for a later try.
            log.warning("webhook intake failed", extra=log_fields(error=type(exc).__name__))
            for msg in taken:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
            await asyncio.sleep(1)
            return
        for msg in taken:
            await msg.ack()

    async def run(self) -> None:
        """Takes events from JetStream for as long as the process lives."""
        nc: NATS | None = None
        sub: JetStreamContext.PullSubscription | None = None
        checked = time.monotonic()
        try:
            while True:
                try:
                    if nc is None or nc.is_closed or sub is None:
                        nc = nc if nc is not None and not nc.is_closed else await self._connect()
                        sub = await self._subscribe(nc)
                        log.info("webhook intake following call events")
                    try:
                        msgs = await sub.fetch(BATCH, timeout=1)
                    except TimeoutError:  # nothing new, or NATS reconnecting
                        if time.monotonic() - checked > CONSUMER_CHECK_SECONDS:
                            checked = time.monotonic()
                            # A NATS that lost its store lost the consumer too: recreate it.
                            with contextlib.suppress(TimeoutError):
                                await sub.consumer_info()
                        continue
                    await self._handle(msgs)
                except asyncio.CancelledError:
                    raise
                except NotFoundError:
                    log.warning("webhook consumer or stream missing; recreating it")
                    sub = None
                    await asyncio.sleep(0.5)
                except Exception as exc:
                    log.warning(
                        "webhook intake waiting for NATS",
                        extra=log_fields(error=type(exc).__name__),
                    )
                    sub = None
                    await asyncio.sleep(0.5)
        finally:
            # Unacked messages go to another replica after ack_wait.
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), 2)
