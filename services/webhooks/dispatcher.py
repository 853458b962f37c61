"""Webhook dispatcher: JetStream → webhook_deliveries rows → signed POSTs with retries.

Intake: a durable pull consumer shared by all replicas turns each call event into a
delivery row (unique per tenant and event, so redelivery is harmless) and acks.
Delivery: replicas claim due rows with a lease (FOR UPDATE SKIP LOCKED) and POST them
concurrently, each with its own timeout, so a slow endpoint only holds its own rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any

import aiohttp
from google.protobuf import json_format
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import Counter
from sendsar.calls.v1 import events_pb2
from sqlalchemy import case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls.relay import connect, ensure_stream
from services.common import events
from services.common.db import transaction
from services.common.logging import log_fields
from services.common.models import DELIVERIES, WEBHOOKS, new_id
from services.common.settings import Settings
from services.webhooks import signing

log = logging.getLogger(__name__)

DURABLE = "webhooks"
LEASE = timedelta(seconds=60)
OUTCOMES = Counter("webhook_deliveries_total", "Webhook delivery attempts", ["outcome"])


def body_of(event: events_pb2.CallEvent) -> str:
    data = json_format.MessageToDict(event)
    data.pop("recipientUserIds", None)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def next_delay(settings: Settings, attempts: int) -> float:
    """Exponential back-off with jitter (50-100% of the capped delay)."""
    capped = min(
        settings.WEBHOOK_BASE_DELAY_SECONDS * 2**attempts, settings.WEBHOOK_MAX_DELAY_SECONDS
    )
    return capped * random.uniform(0.5, 1.0)


class Dispatcher:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.wakeup = asyncio.Event()

    # --- intake -----------------------------------------------------------------

    async def record(self, event: events_pb2.CallEvent) -> None:
        async with transaction(self.engine) as conn:
            endpoint = (
                await conn.execute(
                    select(WEBHOOKS.c.events).where(WEBHOOKS.c.tenant_id == event.tenant_id)
                )
            ).first()
            if endpoint is None or (endpoint.events and event.type not in endpoint.events):
                return
            stmt = pg_insert(DELIVERIES).values(
                id=new_id("whd"),
                tenant_id=event.tenant_id,
                event_id=event.id,
                event_type=event.type,
                body=body_of(event),
            )
            await conn.execute(
                stmt.on_conflict_do_nothing(constraint="uq_webhook_deliveries_event")
            )
        self.wakeup.set()

    async def consume(self) -> None:
        nc: NATS | None = None
        while True:
            try:
                if nc is None or nc.is_closed:
                    nc = await connect(self.settings.NATS_URL, "webhooks")
                    await ensure_stream(nc)
                    sub = await nc.jetstream().pull_subscribe(
                        events.SUBJECTS,
                        durable=DURABLE,
                        config=ConsumerConfig(
                            ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1
                        ),
                    )
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except NatsTimeout:
                    continue
                for msg in msgs:
                    event = events_pb2.CallEvent()
                    event.ParseFromString(msg.data)
                    await self.record(event)
                    await msg.ack()
            except asyncio.CancelledError:
                # Unacked messages are redelivered to another replica after ack_wait.
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(nc.close(), 2)
                raise
            except Exception as exc:
                log.warning("webhook intake waiting", extra=log_fields(error=type(exc).__name__))
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
                nc = None
                await asyncio.sleep(0.5)

    # --- delivery ---------------------------------------------------------------

    async def claim(self, limit: int) -> list[Any]:
        due = (
            select(DELIVERIES.c.id)
            .where(
                DELIVERIES.c.status == "pending",
                DELIVERIES.c.next_attempt_at <= func.now(),
                or_(DELIVERIES.c.lease_until.is_(None), DELIVERIES.c.lease_until < func.now()),
            )
            .order_by(DELIVERIES.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with transaction(self.engine) as conn:
            rows = await conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id.in_(due.scalar_subquery()))
                .values(lease_until=func.now() + LEASE)
                .returning(DELIVERIES)
            )
            return list(rows.all())

    async def deliver(self, http: aiohttp.ClientSession, row: Any) -> None:
        async with self.engine.connect() as conn:
            endpoint = (
                await conn.execute(
                    select(WEBHOOKS.c.url, WEBHOOKS.c.secret).where(
                        WEBHOOKS.c.tenant_id == row.tenant_id
                    )
                )
            ).first()
        error: str | None = "endpoint removed"
        if endpoint is not None:
            body = row.body.encode()
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "Sendsar-Event-Id": row.event_id,
                "Sendsar-Timestamp": str(timestamp),
                signing.HEADER: signing.sign(endpoint.secret, timestamp, body),
            }
            try:
                async with http.post(
                    endpoint.url, data=body, headers=headers, allow_redirects=False
                ) as reply:
                    error = None if 200 <= reply.status < 300 else f"HTTP {reply.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
        await self.settle(row, error, final=endpoint is None)

    async def settle(self, row: Any, error: str | None, *, final: bool = False) -> None:
        values: dict[str, Any]
        if error is None:
            values = {"status": "delivered", "delivered_at": func.now(), "lease_until": None}
        else:
            give_up_at = DELIVERIES.c.created_at + timedelta(
                seconds=self.settings.WEBHOOK_MAX_AGE_SECONDS
            )
            values = {
                "attempts": DELIVERIES.c.attempts + 1,
                "last_error": error[:200],
                "lease_until": None,
                "next_attempt_at": func.now()
                + timedelta(seconds=next_delay(self.settings, row.attempts)),
                # Past the retry window the delivery is recorded as failed.
                "status": "failed"
                if final
                else case((func.now() > give_up_at, "failed"), else_="pending"),
            }
        async with transaction(self.engine) as conn:
            status = (
                await conn.execute(
                    update(DELIVERIES)
                    .where(DELIVERIES.c.id == row.id)
                    .values(**values)
                    .returning(DELIVERIES.c.status)
                )
            ).scalar()
        OUTCOMES.labels("retry" if status == "pending" else str(status)).inc()
        log.info(
            "webhook attempt",
            extra=log_fields(
                tenantId=row.tenant_id, eventId=row.event_id, status=status, error=error
            ),
        )

    async def run_deliveries(self) -> None:
        limit = self.settings.WEBHOOK_CONCURRENCY
        timeout = aiohttp.ClientTimeout(total=self.settings.WEBHOOK_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            running: set[asyncio.Task[None]] = set()
            while True:
                free = limit - len(running)
                rows = await self.claim(free) if free > 0 else []
                for row in rows:
                    task = asyncio.create_task(self.deliver(http, row))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if not rows:
                    self.wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), 0.2)
