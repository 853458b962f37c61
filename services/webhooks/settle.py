"""Recording attempts: the outcomes of many requests written by one statement.

A replica delivering a thousand webhooks a second would otherwise spend a transaction
per request on bookkeeping. Outcomes wait in memory for at most SETTLE_SECONDS (or
until SETTLE_BATCH of them are there) and are then written together; the statement
changes a row only while it is pending, so a row a second replica sent after this one's
lease ran out is settled once, by whichever outcome arrives first. An outcome lost with
its process leaves the row leased; after the lease it is sent again (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from services.common.db import Pool
from services.common.logging import log_fields

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.02
SETTLE_BATCH = 256

# Delivered rows keep their next_attempt_at; failed ones get their next try (or become
# failed for good: `final`, or past the retry window counted from the row's creation).
SETTLE = """
UPDATE webhook_deliveries d SET
    attempts = d.attempts + 1,
    lease_until = NULL,
    last_error = s.error,
    status = CASE WHEN s.error IS NULL THEN 'delivered'
                  WHEN s.final OR now() > d.created_at + make_interval(secs => %(max_age)s)
                  THEN 'failed'
                  ELSE 'pending' END,
    delivered_at = CASE WHEN s.error IS NULL THEN now() ELSE d.delivered_at END,
    next_attempt_at = CASE WHEN s.error IS NULL THEN d.next_attempt_at
                           ELSE now() + make_interval(secs => s.delay) END
FROM unnest(%(ids)s::text[], %(errors)s::text[], %(final)s::bool[], %(delays)s::float8[])
     AS s(id, error, final, delay)
WHERE d.id = s.id AND d.status = 'pending'
RETURNING d.id, d.status"""


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: `error` None when delivered, else a fixed phrase."""

    id: str
    tenant_id: str
    event_id: str
    event_type: str
    attempt: int  # this attempt's number (1 for the first)
    error: str | None
    final: bool = False  # failed for good whatever the retry window says
    delay: float = 0.0  # seconds until the next try, when it failed


Recorded = Callable[[Outcome, str], None]  # (outcome, the row's status after it)


class Settler:
    """Collects outcomes and writes them in batches; `recorded` hears each one written."""

    def __init__(self, pool: Pool, max_age_seconds: float, recorded: Recorded) -> None:
        self.pool = pool
        self.max_age_seconds = max_age_seconds
        self.recorded = recorded
        self.waiting: list[Outcome] = []
        self.arrived = asyncio.Event()

    def add(self, outcome: Outcome) -> None:
        self.waiting.append(outcome)
        self.arrived.set()

    async def flush(self) -> None:
        """Writes what is waiting (kept for the next flush if the database is away)."""
        batch, self.waiting = self.waiting[:SETTLE_BATCH], self.waiting[SETTLE_BATCH:]
        if not batch:
            return
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    SETTLE,
                    {
                        "max_age": self.max_age_seconds,
                        "ids": [o.id for o in batch],
                        "errors": [o.error for o in batch],
                        "final": [o.final for o in batch],
                        "delays": [o.delay for o in batch],
                    },
                )
                statuses = dict(await cur.fetchall())
        except Exception:
            self.waiting[:0] = batch
            raise
        for outcome in batch:
            # Absent: no longer pending (another replica's attempt settled it first).
            self.recorded(outcome, str(statuses.get(outcome.id, "settled elsewhere")))

    async def run(self) -> None:
        """Flushes whenever outcomes wait, at most every SETTLE_SECONDS; on cancellation it
        writes what is left first."""
        try:
            while True:
                await self.arrived.wait()
                self.arrived.clear()
                if len(self.waiting) < SETTLE_BATCH:
                    await asyncio.sleep(SETTLE_SECONDS)
                try:
                    while self.waiting:
                        await self.flush()
                except Exception as exc:  # database away: the outcomes wait for the next try
                    log.warning(
                        "webhook outcomes not recorded yet",
                        extra=log_fields(error=type(exc).__name__),
                    )
                    await asyncio.sleep(1.0)
                    self.arrived.set()
        finally:
            with contextlib.suppress(Exception):
                while self.waiting:
                    await self.flush()
