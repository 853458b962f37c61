"""Webhook delivery: due rows are leased, POSTed concurrently and settled.

Every replica runs this loop. A claim is one UPDATE that leases due rows picked with
FOR UPDATE SKIP LOCKED, so replicas never send the same row at once; a replica that
dies mid-request leaves a lease that expires, and the row is sent again (at least once).

Isolation: each POST is its own task with its own timeout, at most WEBHOOK_CONCURRENCY
at a time per replica, and at most a quarter of them for one tenant (a claim takes
each tenant's oldest due rows, up to what is left of its share). So a tenant whose endpoint hangs
or whose backlog is huge holds a few slots, never the others' deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter as Tally
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter, Histogram
from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import transaction
from services.common.logging import log_fields
from services.common.models import DELIVERIES, WEBHOOKS
from services.common.settings import Settings
from services.webhooks import signing, ssrf_guard

log = logging.getLogger(__name__)

USER_AGENT = "Sendsar-Webhooks/1"
# While rows are due that this replica could not take (a tenant at its share, rows
# another replica holds), it looks again this often.
POLL_SECONDS = 0.2
# An idle replica sleeps until the next retry falls due, but at most this long: rows
# another replica queued and then dropped (it died; their lease expired) wait no longer.
IDLE_SECONDS = 1.0

ATTEMPTS = Counter(
    "webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"]
)  # delivered | retried | failed
SECONDS = Histogram(
    "webhook_request_seconds",
    "Webhook POST duration",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

D = DELIVERIES


def next_delay(settings: Settings, attempts: int) -> float:
    """Seconds until the next try after `attempts` earlier failures: exponential,
    capped, with full jitter (50-100%) so a recovering endpoint is not hit in lockstep."""
    capped = min(
        settings.WEBHOOK_BASE_DELAY_SECONDS * 2.0 ** min(attempts, 60),
        settings.WEBHOOK_MAX_DELAY_SECONDS,
    )
    return capped * random.uniform(0.5, 1.0)


def signed_headers(event_id: str, secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.EVENT_ID_HEADER: event_id,
        signing.TIMESTAMP_HEADER: str(timestamp),
        signing.HEADER: signing.sign(secret, timestamp, body),
    }


class Deliverer:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.wakeup = asyncio.Event()
        self.concurrency = settings.WEBHOOK_CONCURRENCY
        self.per_tenant = max(1, self.concurrency // 4)
        # Longer than any request can take, so a live lease means "being sent".
        self.lease = timedelta(seconds=max(60.0, 2 * settings.WEBHOOK_TIMEOUT_SECONDS + 10))
        self.in_flight: Tally[str] = Tally()

    # --- claim --------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Any]:
        due = (
            D.c.status == "pending",
            D.c.next_attempt_at <= func.now(),
            or_(D.c.lease_until.is_(None), D.c.lease_until < func.now()),
        )
        busy = [t for t, n in self.in_flight.items() if n >= self.per_tenant]
        ranked = (
            select(
                D.c.id,
                D.c.tenant_id,
                D.c.next_attempt_at,
                func.row_number()
                .over(partition_by=D.c.tenant_id, order_by=D.c.next_attempt_at)
                .label("rank"),
            )
            .where(*due, *([D.c.tenant_id.not_in(busy)] if busy else []))
            .subquery("ranked")
        )
        # Each tenant's share left in this replica: its oldest due rows up to that many.
        allowance: Any = (
            case(
                {t: self.per_tenant - n for t, n in self.in_flight.items()},
                value=ranked.c.tenant_id,
                else_=self.per_tenant,
            )
            if self.in_flight
            else self.per_tenant
        )
        picked = (
            select(D.c.id)
            .join(ranked, ranked.c.id == D.c.id)
            .where(ranked.c.rank <= allowance, *due)  # `due` is re-checked once locked
            .order_by(ranked.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=D)
        )
        async with transaction(self.engine) as conn:
            result = await conn.execute(
                update(D)
                .where(D.c.id.in_(picked.scalar_subquery()))
                .values(lease_until=func.now() + self.lease)
                .returning(
                    D.c.id,
                    D.c.tenant_id,
                    D.c.event_id,
                    D.c.event_type,
                    D.c.body,
                    D.c.attempts,
                )
            )
            return list(result.all())

    async def seconds_to_next_retry(self) -> float:
        """How long until the soonest unleased pending row falls due (IDLE_SECONDS when
        there is none). An index walk (`ix_webhook_deliveries_due`), no transaction."""
        soonest = (
            select(func.extract("epoch", D.c.next_attempt_at - func.now()))
            .where(D.c.status == "pending", D.c.lease_until.is_(None))
            .order_by(D.c.next_attempt_at)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            wait = (await conn.execute(soonest)).scalar()
        return IDLE_SECONDS if wait is None else min(float(wait), IDLE_SECONDS)

    # --- send -----------------------------------------------------------------------

    async def send(self, http: aiohttp.ClientSession, row: Any) -> None:
        """One attempt for one row; never raises (a lost settle means the lease expires)."""
        try:
            async with self.engine.connect() as conn:
                # Read now, not at intake: a changed URL or rotated secret applies to retries.
                endpoint = (
                    await conn.execute(
                        select(WEBHOOKS.c.url, WEBHOOKS.c.secret).where(
                            WEBHOOKS.c.tenant_id == row.tenant_id
                        )
                    )
                ).first()
            if endpoint is None:
                await self.settle(row, "endpoint removed", final=True)
                return
            body = row.body.encode()
            headers = signed_headers(row.event_id, endpoint.secret, body, int(time.time()))
            error: str | None
            started = time.perf_counter()
            try:
                if not self.settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
                    # Names are vetted (and pinned) by the connector's resolver; IP
                    # literals never reach it.
                    ssrf_guard.check_literal(urlsplit(endpoint.url).hostname or "")
                async with http.post(
                    endpoint.url, data=body, headers=headers, allow_redirects=False
                ) as reply:
                    # The response body is never read: we neither need nor store it.
                    error = None if 200 <= reply.status < 300 else f"HTTP {reply.status}"
            except ssrf_guard.TargetNotAllowed:
                error = "target not allowed"  # retried: the tenant may fix its DNS or URL
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                error = type(exc).__name__
            SECONDS.observe(time.perf_counter() - started)
            await self.settle(row, error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "webhook attempt not settled; retried when its lease expires",
                extra=log_fields(
                    tenantId=row.tenant_id, eventId=row.event_id, error=type(exc).__name__
                ),
            )
        finally:
            self.in_flight[row.tenant_id] -= 1
            if self.in_flight[row.tenant_id] <= 0:
                del self.in_flight[row.tenant_id]
            self.wakeup.set()  # a slot is free

    async def settle(self, row: Any, error: str | None, *, final: bool = False) -> None:
        values: dict[str, Any] = {"attempts": D.c.attempts + 1, "lease_until": None}
        if error is None:
            values.update(status="delivered", delivered_at=func.now(), last_error=None)
        else:
            give_up_at = D.c.created_at + timedelta(seconds=self.settings.WEBHOOK_MAX_AGE_SECONDS)
            values.update(
                last_error=error[:200],  # a status code or an exception class, never a body
                next_attempt_at=func.now()
                + timedelta(seconds=next_delay(self.settings, row.attempts)),
                # Past the retry window the delivery is recorded as failed, for good.
                status="failed"
                if final
                else case((func.now() > give_up_at, "failed"), else_="pending"),
            )
        async with transaction(self.engine) as conn:
            status = (
                await conn.execute(
                    update(D)
                    .where(D.c.id == row.id, D.c.status == "pending")
                    .values(**values)
                    .returning(D.c.status)
                )
            ).scalar()
        outcome = {"pending": "retried"}.get(str(status), str(status))
        ATTEMPTS.labels(outcome).inc()
        log.info(
            "webhook attempt",
            extra=log_fields(
                tenantId=row.tenant_id,
                eventId=row.event_id,
                type=row.event_type,
                attempt=row.attempts + 1,
                outcome=outcome,
                error=error,
            ),
        )

    # --- loop -----------------------------------------------------------------------

    def connector(self) -> aiohttp.TCPConnector:
        """Connections only to addresses the SSRF guard vetted when it resolved them."""
        guarded = not self.settings.WEBHOOK_ALLOW_PRIVATE_TARGETS
        return aiohttp.TCPConnector(
            limit=self.concurrency, resolver=ssrf_guard.PinnedResolver() if guarded else None
        )

    async def pause(self, free: int, claimed: list[Any]) -> float:
        """How long the loop waits for a wake-up (rows queued by this replica's intake, a
        slot freed). Idle, it sleeps until the next retry is due instead of polling: an
        idle replica costs one read a second, not five claim transactions."""
        if free <= 0:
            return IDLE_SECONDS  # every slot busy: a finishing request wakes the loop
        if claimed:
            return POLL_SECONDS
        try:
            wait = await self.seconds_to_next_retry()
        except Exception:  # database away: the claim's own retry logs it
            return IDLE_SECONDS
        return wait if wait > 0 else POLL_SECONDS  # due but not ours to take: look again soon

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.WEBHOOK_TIMEOUT_SECONDS)
        connector = self.connector()
        running: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            try:
                while True:
                    self.wakeup.clear()
                    free = self.concurrency - len(running)
                    rows: list[Any] = []
                    if free > 0:
                        try:
                            rows = await self.claim(free)
                        except Exception as exc:  # database away: keep the loop, retry soon
                            log.warning(
                                "webhook claim failed", extra=log_fields(error=type(exc).__name__)
                            )
                            await asyncio.sleep(1)
                    for row in rows:
                        self.in_flight[row.tenant_id] += 1
                        task = asyncio.create_task(self.send(http, row))
                        running.add(task)
                        task.add_done_callback(running.discard)
                    if rows and len(rows) == free:
                        continue  # maybe more due: claim again at once
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wakeup.wait(), await self.pause(free, rows))
            finally:
                # Shutdown: let requests in flight finish (bounded); the rest keep their
                # lease and are sent again after it expires.
                if running:
                    _, pending = await asyncio.wait(
                        running, timeout=self.settings.WEBHOOK_TIMEOUT_SECONDS + 1
                    )
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
