"""Webhook delivery: due rows are leased fairly across tenants, POSTed concurrently and
settled in batches.

Every replica runs this loop. A claim (services/webhooks/claim.py) is one statement that
leases due rows picked with FOR UPDATE SKIP LOCKED, so replicas never send the same row
at once; a replica that dies mid-request leaves a lease that expires, and the row is
sent again (at least once). Outcomes are written in batches (services/webhooks/settle.py).

Isolation: each POST is its own task with its own timeout, at most WEBHOOK_CONCURRENCY
at a time per replica, and at most a quarter of them for one tenant; claims go round
the tenants with due rows, a share each. So a tenant whose endpoint hangs or whose
backlog is huge holds a few slots, never the others' deliveries.

Speed: the loop claims again only once a quarter of the slots is free (or it is idle),
so a busy replica claims tens of rows per statement instead of one per finished request,
and plain psycopg statements (prepared by the server) carry both claim and settle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter as Tally
from typing import Any

import aiohttp
from prometheus_client import Counter, Histogram

from services.common.db import Pool, open_pool
from services.common.logging import log_fields
from services.common.settings import Settings
from services.webhooks import signing, ssrf_guard
from services.webhooks.claim import Claimed, FairClaim
from services.webhooks.settle import Outcome, Settler

log = logging.getLogger(__name__)

USER_AGENT = "Sendsar-Webhooks/1"
# While rows are due that this replica could not take (a tenant at its share, rows
# another replica holds), it looks again this often.
POLL_SECONDS = 0.2
# Rows leased by one claim at most: a shorter statement holds its row locks for less
# time and stays within a few milliseconds under load; more slots free mean more claims.
CLAIM_BATCH = 32
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

# The soonest unleased pending row: an index walk (ix_webhook_deliveries_due).
NEXT_RETRY = """
SELECT extract(epoch FROM next_attempt_at - now()) FROM webhook_deliveries
WHERE status = 'pending' AND lease_until IS NULL ORDER BY next_attempt_at LIMIT 1"""


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


def failure(exc: BaseException) -> str:
    """The fixed phrase recorded for a failed request: never the exception's text, which
    may quote what the receiver sent."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls error"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns error"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return "connection error"


class Deliverer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wakeup = asyncio.Event()
        self.concurrency = settings.WEBHOOK_CONCURRENCY
        self.per_tenant = max(1, self.concurrency // 4)
        # Claim again once this many slots are free (a claim per finished request would
        # cost a statement per delivery under load).
        self.refill = max(1, self.concurrency // 4)
        # Longer than any request can take, so a live lease means "being sent".
        lease = max(60.0, 2 * settings.WEBHOOK_TIMEOUT_SECONDS + 10)
        self.claims = FairClaim(share=self.per_tenant, lease_seconds=lease)
        self.in_flight: Tally[str] = Tally()
        self.running: set[asyncio.Task[None]] = set()
        # Requests not finished yet. Not len(running): a task leaves that set in a
        # callback after it ends, and a burst of replies ends many tasks before any
        # callback runs, so a count read there would never free a slot.
        self.sending = 0
        self._pool: Pool | None = None
        self._settler: Settler | None = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the deliverer is not open")
        return self._pool

    @property
    def settler(self) -> Settler:
        if self._settler is None:
            raise RuntimeError("the deliverer is not open")
        return self._settler

    async def open(self) -> None:
        # Claims, settles and the idle read: never more than three at once.
        self._pool = await open_pool(self.settings, 3)
        self._settler = Settler(
            self._pool, self.settings.WEBHOOK_MAX_AGE_SECONDS, self.recorded, self.wakeup.set
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # --- claim --------------------------------------------------------------------

    async def claim(self, limit: int) -> list[Claimed]:
        async with self.pool.connection() as conn:
            return await self.claims.claim(conn, limit, self.in_flight)

    async def seconds_to_next_retry(self) -> float:
        """How long until the soonest unleased pending row falls due (IDLE_SECONDS when
        there is none)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(NEXT_RETRY)).fetchone()
        return IDLE_SECONDS if row is None else min(float(row[0]), IDLE_SECONDS)

    # --- send -----------------------------------------------------------------------

    async def attempt(self, http: aiohttp.ClientSession, row: Claimed) -> Outcome:
        """One POST of one row; its outcome (never raises for the receiver's failures)."""

        def outcome(error: str | None, *, code: int | None = None, final: bool = False) -> Outcome:
            delay = 0.0 if error is None else next_delay(self.settings, row.attempts)
            return Outcome(
                row.id,
                row.tenant_id,
                row.event_id,
                row.event_type,
                row.attempts + 1,
                error,
                code=code,
                url=row.url,
                final=final,
                delay=delay,
                chained=row.chained,
            )

        if row.url is None or row.secret is None:
            return outcome("endpoint removed", final=True)
        body = row.body.encode()
        headers = signed_headers(row.event_id, row.secret, body, int(time.time()))
        started = time.perf_counter()
        try:
            target = ssrf_guard.target(row.url)
            if not self.settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
                # Names are vetted (and pinned) by the connector's resolver; IP literals
                # never reach it. The same parsed URL is what aiohttp connects to.
                ssrf_guard.check_literal(target.raw_host or "")
            post = http.post(target, data=body, headers=headers, allow_redirects=False)
            async with post as reply:
                # The response body is never read: we neither need nor store it.
                code: int | None = reply.status
                error = None if 200 <= reply.status < 300 else f"http {reply.status}"
        except ssrf_guard.TargetNotAllowed:
            code, error = None, "target not allowed"  # retried: the tenant may fix it
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            code, error = None, failure(exc)
        finally:
            SECONDS.observe(time.perf_counter() - started)
        return outcome(error, code=code)

    async def send(self, http: aiohttp.ClientSession, row: Claimed) -> None:
        """Sends one row and hands its outcome to the settler; never raises (a lost
        outcome means the lease expires and the row is sent again)."""
        try:
            self.settler.add(await self.attempt(http, row))
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
            self.sending -= 1
            self.in_flight[row.tenant_id] -= 1
            if self.in_flight[row.tenant_id] <= 0:
                del self.in_flight[row.tenant_id]
            # Enough slots free for a claim. After a replay's event, the settle that makes
            # the next one due wakes the loop instead: a claim now would find nothing.
            if self.concurrency - self.sending >= self.refill and not row.chained:
                self.wakeup.set()

    def recorded(self, outcome: Outcome, status: str) -> None:
        """Counts and logs an outcome once it is written (failures at INFO, the rest at
        DEBUG: a line per delivery would be a visible share of the CPU)."""
        name = {"pending": "retried"}.get(status, status)
        ATTEMPTS.labels(name).inc()
        level = logging.DEBUG if outcome.error is None else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "webhook attempt",
                extra=log_fields(
                    tenantId=outcome.tenant_id,
                    eventId=outcome.event_id,
                    type=outcome.event_type,
                    attempt=outcome.attempt,
                    outcome=name,
                    error=outcome.error,
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
        """How long the loop waits for a wake-up (rows queued by this replica's intake,
        slots freed). Idle, it sleeps until the next retry is due instead of polling: an
        idle replica costs one read a second, not five claims."""
        if free < self.refill:
            return IDLE_SECONDS  # slots busy: finishing requests wake the loop
        if claimed:
            return POLL_SECONDS
        try:
            wait = await self.seconds_to_next_retry()
        except Exception:  # database away: the claim's own retry logs it
            return IDLE_SECONDS
        return wait if wait > 0 else POLL_SECONDS  # due but not ours to take: look again soon

    async def run(self) -> None:
        await self.open()
        settling = asyncio.create_task(self.settler.run())
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.WEBHOOK_TIMEOUT_SECONDS)
            async with aiohttp.ClientSession(timeout=timeout, connector=self.connector()) as http:
                try:
                    await self._loop(http)
                finally:
                    await self._finish_sends()
        finally:
            settling.cancel()  # writes the outcomes still waiting first
            with contextlib.suppress(asyncio.CancelledError):
                await settling
            await self.close()

    async def _loop(self, http: aiohttp.ClientSession) -> None:
        while True:
            self.wakeup.clear()
            free = self.concurrency - self.sending
            limit = min(free, CLAIM_BATCH)
            rows: list[Claimed] = []
            if limit > 0:
                try:
                    rows = await self.claim(limit)
                except Exception as exc:  # database away: keep the loop, retry soon
                    log.warning("webhook claim failed", extra=log_fields(error=type(exc).__name__))
                    await asyncio.sleep(1)
            for row in rows:
                self.sending += 1
                self.in_flight[row.tenant_id] += 1
                task = asyncio.create_task(self.send(http, row))
                self.running.add(task)
                task.add_done_callback(self.running.discard)
            if rows and len(rows) == limit:
                continue  # maybe more due: claim again (at once, if slots are free)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), await self.pause(free - len(rows), rows))

    async def _finish_sends(self) -> None:
        """Shutdown: requests in flight finish (bounded); the rest keep their lease and
        are sent again after it expires."""
        if not self.running:
            return
        _, pending = await asyncio.wait(
            self.running, timeout=self.settings.WEBHOOK_TIMEOUT_SECONDS + 1
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
