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
# failed for good: `final`, or past the retry window). A replay's next event is released
# (made due) when the one before it was first tried, whatever the outcome: a replay goes
# on in order while a failed event of it retries on its own schedule.
SETTLE = """
WITH s AS (
    SELECT * FROM unnest(%(ids)s::text[], %(errors)s::text[], %(codes)s::int[],
                         %(final)s::bool[], %(delays)s::float8[], %(urls)s::text[])
         AS s(id, error, code, final, delay, url)
),
settled AS (
    UPDATE webhook_deliveries d SET
        attempts = d.attempts + 1,
        lease_until = NULL,
        last_error = s.error,
        last_status_code = s.code,
        last_attempt_at = now(),
        url = coalesce(s.url, d.url),
        status = CASE WHEN s.error IS NULL THEN 'delivered'
                      WHEN s.final OR now() > coalesce(
                          d.give_up_at, d.created_at + make_interval(secs => %(max_age)s))
                      THEN 'failed'
                      ELSE 'pending' END,
        delivered_at = CASE WHEN s.error IS NULL THEN now() ELSE d.delivered_at END,
        next_attempt_at = CASE WHEN s.error IS NULL THEN d.next_attempt_at
                               ELSE now() + make_interval(secs => s.delay) END
    FROM s WHERE d.id = s.id AND d.status = 'pending'
    RETURNING d.id, d.status, d.replay_id, d.replay_seq
),
released AS (
    UPDATE webhook_deliveries n SET next_attempt_at = now()
    FROM settled x
    WHERE x.replay_id <> '' AND n.replay_id = x.replay_id AND n.replay_seq = x.replay_seq + 1
      AND n.next_attempt_at = 'infinity'
    RETURNING n.id
)
SELECT id, status FROM settled
UNION ALL
SELECT NULL, 'released' FROM released"""


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: `error` None when delivered, else a fixed phrase."""

    id: str
    tenant_id: str
    event_id: str
    event_type: str
    attempt: int  # this attempt's number (1 for the first)
    error: str | None
    code: int | None = None  # the receiver's HTTP status, when it answered
    url: str | None = None  # where it was sent
    final: bool = False  # failed for good whatever the retry window says
    delay: float = 0.0  # seconds until the next try, when it failed
    chained: bool = False  # part of a replay: the next event waits for this outcome


Recorded = Callable[[Outcome, str], None]  # (outcome, the row's status after it)


class Settler:
    """Collects outcomes and writes them in batches; `recorded` hears each one written."""

    def __init__(
        self,
        pool: Pool,
        max_age_seconds: float,
        recorded: Recorded,
        released: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.max_age_seconds = max_age_seconds
        self.recorded = recorded
        self.released = released  # a replay's next event became due
        self.waiting: list[Outcome] = []
        self.arrived = asyncio.Event()
        self.urgent = False  # a replay waits for an outcome here: no batching delay

    def add(self, outcome: Outcome) -> None:
        self.waiting.append(outcome)
        self.urgent = self.urgent or outcome.chained
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
                        "codes": [o.code for o in batch],
                        "final": [o.final for o in batch],
                        "delays": [o.delay for o in batch],
                        "urls": [o.url for o in batch],
                    },
                )
                rows = await cur.fetchall()
        except Exception:
            self.waiting[:0] = batch
            raise
        statuses = {row_id: status for row_id, status in rows if row_id is not None}
        if len(statuses) < len(rows):
            self.released()
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
                if len(self.waiting) < SETTLE_BATCH and not self.urgent:
                    await asyncio.sleep(SETTLE_SECONDS)
                self.urgent = False
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
