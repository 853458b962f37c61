"""TenantService's webhook delivery RPCs: list the records, retry one, replay a window.

Every statement is scoped to the caller's tenant; another tenant's delivery id is simply
not found. Changes are single conditional statements (a retry only turns a delivery that
is not pending back to pending), so concurrent requests and the dispatcher never race.

A replay reads the window's events from the outbox (kept RETENTION_SECONDS, 7 days) in
feed order and queues one delivery per event under a new replay id: the first due now,
each next one released by the dispatcher when the one before it was tried
(services/webhooks/settle.py). So a replay is sent one event after another, in order,
and a tenant's replay never has more than one event due at a time: it cannot crowd out
anyone's live deliveries, its own included.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sendsar.calls.v1 import events_pb2
from sendsar.tenant.v1 import tenant_pb2 as pb
from sqlalchemy import text
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import validation
from services.common.auth import current_principal
from services.common.db import transaction
from services.common.errors import conflict, invalid, not_found
from services.common.models import new_id
from services.common.page_tokens import PageTokens, Position
from services.common.settings import Settings
from services.events import types
from services.tenant.convert import timestamp
from services.webhooks.intake import delivery_body

RETRIES = Counter("webhook_retries_requested_total", "Deliveries sent again on request")
REPLAYS = Counter("webhook_replays_total", "Replays requested")
REPLAYED = Counter("webhook_replayed_events_total", "Events queued by replays")

STATUSES = ("pending", "delivered", "failed")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_REPLAY_EVENTS = 10_000
MAX_REPLAY_WINDOW = timedelta(hours=24)

_COLUMNS = """id, event_id, event_type, url, status, attempts, last_status_code, last_error,
    created_at, last_attempt_at,
    CASE WHEN status = 'pending' AND next_attempt_at <> 'infinity' THEN next_attempt_at END
        AS next_attempt_at"""

# Newest first over ix_webhook_deliveries_tenant_created; the keyset (created_at, id)
# below the token. The filters are optional (NULL: any).
LIST = f"""
SELECT {_COLUMNS} FROM webhook_deliveries
WHERE tenant_id = :tenant AND created_at > now() - make_interval(secs => :kept)
  AND (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:event AS text) IS NULL OR event_id = :event)
  AND (CAST(:before_at AS timestamptz) IS NULL OR (created_at, id) < (:before_at, :before_id))
ORDER BY created_at DESC, id DESC
LIMIT :limit"""

# A retry restarts the attempts and the retry window; never of a pending delivery.
RETRY = f"""
UPDATE webhook_deliveries
SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL,
    give_up_at = now() + make_interval(secs => :max_age)
WHERE id = :id AND tenant_id = :tenant AND status IN ('delivered', 'failed')
RETURNING {_COLUMNS}"""
STATUS_OF = "SELECT status FROM webhook_deliveries WHERE id = :id AND tenant_id = :tenant"
ENDPOINT = "SELECT url, events FROM webhook_endpoints WHERE tenant_id = :tenant"

# The tenant's endpoint row locked: one replay of a tenant is set up at a time.
LOCK_ENDPOINT = ENDPOINT + " FOR UPDATE"
REPLAY_QUEUED = """
SELECT EXISTS (SELECT 1 FROM webhook_deliveries
               WHERE tenant_id = :tenant AND status = 'pending'
                 AND next_attempt_at = 'infinity')"""
# The window's events in feed order (first parts only: the parts of one event share its
# id and carry the same webhook body). occurredAt is the writing transaction's time, the
# row's created_at.
WINDOW = """
SELECT payload FROM outbox
WHERE tenant_id = :tenant AND created_at >= :start AND created_at < :end
  AND position('.' in id) = 0 AND subject = ANY(:subjects)
ORDER BY xid, seq
LIMIT :limit"""
QUEUE_REPLAY = """
INSERT INTO webhook_deliveries (id, tenant_id, event_id, event_type, body, status, attempts,
                                url, replay_id, replay_seq, next_attempt_at)
SELECT d.id, :tenant, d.event_id, d.event_type, d.body, 'pending', 0, :url, :replay,
       (d.n - 1)::int, CASE WHEN d.n = 1 THEN now() ELSE 'infinity' END
FROM unnest(CAST(:ids AS text[]), CAST(:events AS text[]), CAST(:types AS text[]),
            CAST(:bodies AS text[])) WITH ORDINALITY AS d(id, event_id, event_type, body, n)"""


def delivery_pb(row: Row[Any]) -> pb.WebhookDelivery:
    return pb.WebhookDelivery(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        url=row.url or "",
        status=row.status,
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=timestamp(row.created_at),
        last_attempt_at=timestamp(row.last_attempt_at),
        next_attempt_at=timestamp(row.next_attempt_at),
    )


def event_types(values: list[str], field: str) -> list[str]:
    """Known event types, duplicates dropped (order kept)."""
    for value in values:
        if value not in types.ALL:
            raise invalid(
                field, f"unknown event type {value[:64]!r}; known: {', '.join(types.ALL)}"
            )
    return list(dict.fromkeys(values))


class WebhookDeliveries:
    """The delivery RPCs of TenantService (a mixin: the servicer holds these attributes)."""

    settings: Settings
    engine: AsyncEngine
    # Signed for the tenant and the filters: a page never mixes two filter sets.
    delivery_pages: PageTokens

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Any
    ) -> pb.ListWebhookDeliveriesResponse:
        tenant_id = current_principal().tenant_id
        if request.status:
            validation.one_of(request.status, "status", STATUSES)
        if request.event_id:
            validation.resource_id(request.event_id, "eventId")
        size = DEFAULT_PAGE_SIZE
        if request.HasField("page_size"):
            size = validation.int_range(request.page_size, "pageSize", 1, MAX_PAGE_SIZE)
        filters = json.dumps([request.status, request.event_id])
        before = (
            self.delivery_pages.read(tenant_id, filters, request.page_token)
            if request.page_token
            else None
        )
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(LIST),
                    {
                        "tenant": tenant_id,
                        "kept": self.settings.RETENTION_SECONDS,
                        "status": request.status or None,
                        "event": request.event_id or None,
                        "before_at": before.created_at if before else None,
                        "before_id": before.id if before else None,
                        "limit": size + 1,
                    },
                )
            ).all()
        response = pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(r) for r in rows[:size]]
        )
        if len(rows) > size:
            last = rows[size - 1]
            response.next_page_token = self.delivery_pages.issue(
                tenant_id, filters, Position(last.created_at, last.id)
            )
        return response

    async def RetryWebhookDelivery(
        self, request: pb.RetryWebhookDeliveryRequest, context: Any
    ) -> pb.RetryWebhookDeliveryResponse:
        tenant_id = current_principal().tenant_id
        delivery_id = validation.resource_id(request.id, "id")
        params = {"id": delivery_id, "tenant": tenant_id}
        async with transaction(self.engine) as conn:
            if (await conn.execute(text(ENDPOINT), params)).first() is None:
                raise not_found("WEBHOOK_NOT_SET", "no webhook endpoint is set")
            row = (
                await conn.execute(
                    text(RETRY), {**params, "max_age": self.settings.WEBHOOK_MAX_AGE_SECONDS}
                )
            ).first()
            if row is None:
                status = (await conn.execute(text(STATUS_OF), params)).scalar()
                if status is None:
                    raise not_found("DELIVERY_NOT_FOUND", "no delivery with this id")
                raise conflict(
                    "DELIVERY_IN_PROGRESS", "the delivery is pending: it is being sent already"
                )
        RETRIES.inc()
        return pb.RetryWebhookDeliveryResponse(delivery=delivery_pb(row))

    async def ReplayWebhook(
        self, request: pb.ReplayWebhookRequest, context: Any
    ) -> pb.ReplayWebhookResponse:
        tenant_id = current_principal().tenant_id
        start, end = self._replay_window(request)
        wanted = event_types(list(request.types), "types")
        async with transaction(self.engine) as conn:
            endpoint = (await conn.execute(text(LOCK_ENDPOINT), {"tenant": tenant_id})).first()
            if endpoint is None:
                raise not_found("WEBHOOK_NOT_SET", "no webhook endpoint is set")
            if (await conn.execute(text(REPLAY_QUEUED), {"tenant": tenant_id})).scalar():
                raise conflict(
                    "REPLAY_IN_PROGRESS",
                    "a replay of this tenant is still being sent; try again when it is done",
                )
            subjects = [types.subject(tenant_id, t) for t in wanted or endpoint.events or types.ALL]
            payloads = (
                (
                    await conn.execute(
                        text(WINDOW),
                        {
                            "tenant": tenant_id,
                            "start": start,
                            "end": end,
                            "subjects": subjects,
                            "limit": MAX_REPLAY_EVENTS + 1,
                        },
                    )
                )
                .scalars()
                .all()
            )
            if len(payloads) > MAX_REPLAY_EVENTS:
                raise invalid(
                    "from",
                    f"the window holds more than {MAX_REPLAY_EVENTS} events; replay a shorter one",
                    reason="REPLAY_TOO_LARGE",
                )
            events = [events_pb2.CallEvent.FromString(p) for p in payloads]
            if events:
                await conn.execute(
                    text(QUEUE_REPLAY),
                    {
                        "tenant": tenant_id,
                        "url": endpoint.url,
                        "replay": new_id("rpl"),
                        "ids": [new_id("whd") for _ in events],
                        "events": [e.id for e in events],
                        "types": [e.type for e in events],
                        "bodies": [delivery_body(e) for e in events],
                    },
                )
        REPLAYS.inc()
        REPLAYED.inc(len(events))
        return pb.ReplayWebhookResponse(events=len(events))

    def _replay_window(self, request: pb.ReplayWebhookRequest) -> tuple[datetime, datetime]:
        if not request.HasField("from_time"):
            raise invalid("from", "is required")
        if not request.HasField("to_time"):
            raise invalid("to", "is required")
        start = request.from_time.ToDatetime(tzinfo=UTC)
        end = request.to_time.ToDatetime(tzinfo=UTC)
        now = datetime.now(UTC)
        if end <= start:
            raise invalid("to", "must be after from")
        if end - start > MAX_REPLAY_WINDOW:
            raise invalid("to", "must be at most 24 hours after from")
        if start < now - timedelta(seconds=self.settings.RETENTION_SECONDS):
            raise invalid("from", "must be within the last 7 days (events kept)")
        if start >= now:
            raise invalid("from", "must be in the past")
        return start, end
