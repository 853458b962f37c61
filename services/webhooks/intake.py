"""Webhook intake: JetStream call events → webhook_deliveries rows.

A durable consumer ("webhooks", read through services.events.consumer) is shared by
every dispatcher replica, so each event is taken by one of them. A batch becomes
delivery rows in one transaction, and only then is it acknowledged: a crash in between
redelivers the batch, and the unique (tenant_id, event_id) makes the second insert a
no-op. Events whose tenant differs from their subject's never get here (the consumer
drops them). From here on the delivery lives in PostgreSQL, where retries are scheduled
(see delivery.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf import json_format
from prometheus_client import Counter
from sendsar.calls.v1 import events_pb2

from services.common.db import Pool, open_pool
from services.common.logging import log_fields
from services.common.models import new_id
from services.common.settings import Settings
from services.events.consumer import EventConsumer, event_span

log = logging.getLogger(__name__)

DURABLE = "webhooks"

EVENTS_TAKEN = Counter(
    "webhook_events_total", "Call events seen by the webhook intake", ["outcome"]
)  # queued | not_subscribed | too_old (dropped ones: events_dropped_total)


# Plain psycopg with prepared statements and no transaction: every batch of events pays
# the endpoint lookup, most of them for tenants with no endpoint, and through SQLAlchemy
# that was four round trips (pre-ping, BEGIN, SELECT, COMMIT) and the profile's largest
# share of this process. The insert is one statement, atomic on its own.
ENDPOINTS = """
SELECT tenant_id, events, url FROM webhook_endpoints WHERE tenant_id = ANY(%(tenants)s)"""
QUEUE = """
INSERT INTO webhook_deliveries (id, tenant_id, event_id, event_type, body, status, attempts, url)
SELECT id, tenant_id, event_id, event_type, body, 'pending', 0, url
FROM unnest(%(ids)s::text[], %(tenants)s::text[], %(events)s::text[], %(types)s::text[],
            %(bodies)s::text[], %(urls)s::text[])
     AS d(id, tenant_id, event_id, event_type, body, url)
ON CONFLICT ON CONSTRAINT uq_webhook_deliveries_event DO NOTHING"""


def delivery_body(event: events_pb2.CallEvent) -> str:
    """The JSON body POSTed to the tenant: the event minus its socket recipients.

    Rendered once at intake (or replay) and stored, so every retry sends (and signs) the
    same bytes. Fields without presence are printed, as in REST responses.
    """
    data = json_format.MessageToDict(event, always_print_fields_with_no_presence=True)
    data.pop("recipientUserIds", None)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def wanted(subscribed: list[str] | None, event_type: str) -> bool:
    """An endpoint's `events` filter: empty means every type."""
    return not subscribed or event_type in subscribed


class Intake:
    def __init__(self, settings: Settings, on_queued: Callable[[], None]) -> None:
        self.settings = settings
        self.on_queued = on_queued  # wakes this replica's delivery loop
        self.consumer = EventConsumer(settings, "webhooks", self.record, durable=DURABLE)
        self._pool: Pool | None = None

    async def run(self) -> None:
        """Takes events from JetStream for as long as the process lives."""
        self._pool = await open_pool(self.settings, 2)
        try:
            await self.consumer.run()
        finally:
            # Unacked events go to another replica after the consumer's ack wait.
            await self.consumer.close()
            await self._pool.close()

    async def record(self, batch: list[events_pb2.CallEvent], parents: list[str | None]) -> int:
        """Queues deliveries for the events whose tenant subscribed to them; returns how many.

        One transaction records the whole batch: each traced event's span covers it."""
        if not any(parents):  # tracing off, or no event with a trace context
            return await self._record(batch)
        with contextlib.ExitStack() as spans:
            for event, parent in zip(batch, parents, strict=True):
                spans.enter_context(event_span("webhooks record", event, parent))
            return await self._record(batch)

    async def _record(self, batch: list[events_pb2.CallEvent]) -> int:
        # An event older than the retry window would only be recorded as failed (e.g. a
        # consumer created after a long outage replaying the stream): not queued at all.
        oldest = datetime.now(UTC) - timedelta(seconds=self.settings.WEBHOOK_MAX_AGE_SECONDS)
        # An event split for a large audience makes one delivery, of its first part (the
        # one with the ring tokens): the others only reach sockets.
        batch = [e for e in batch if not e.HasField("part")]
        fresh = [e for e in batch if e.occurred_at.ToDatetime(tzinfo=UTC) >= oldest]
        EVENTS_TAKEN.labels("too_old").inc(len(batch) - len(fresh))
        if not fresh:
            return 0
        if self._pool is None:
            raise RuntimeError("the intake is not running")
        async with self._pool.connection() as conn:
            tenants = list({e.tenant_id for e in fresh})
            found = await (await conn.execute(ENDPOINTS, {"tenants": tenants})).fetchall()
            endpoints = {tenant: (events, url) for tenant, events, url in found}
            queued = [
                e
                for e in fresh
                if e.tenant_id in endpoints and wanted(endpoints[e.tenant_id][0], e.type)
            ]
            if queued:
                await conn.execute(
                    QUEUE,
                    {
                        "ids": [new_id("whd") for _ in queued],
                        "tenants": [e.tenant_id for e in queued],
                        "events": [e.id for e in queued],
                        "types": [e.type for e in queued],
                        "bodies": [delivery_body(e) for e in queued],
                        "urls": [endpoints[e.tenant_id][1] for e in queued],
                    },
                )
        EVENTS_TAKEN.labels("queued").inc(len(queued))
        EVENTS_TAKEN.labels("not_subscribed").inc(len(fresh) - len(queued))
        for e in queued:
            log.debug("webhook queued", extra=log_fields(tenantId=e.tenant_id, eventId=e.id))
        if queued:
            self.on_queued()
        return len(queued)
