"""Outbox relay: publishes committed call events to NATS JetStream, in order, at least once.

The event id is the Nats-Msg-Id, so a batch re-published after a crash (published to
JetStream, not yet marked in the database) is dropped by JetStream's de-duplication
window. One relay publishes at a time (a transaction-scoped advisory lock), which keeps
the stream in commit order across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from nats.aio.client import Client as NATS
from prometheus_client import Counter
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls.store import NOTIFY_CHANNEL
from services.common.db import transaction
from services.common.jetstream import connect, ensure_stream
from services.common.logging import log_fields
from services.common.models import OUTBOX

log = logging.getLogger(__name__)

PUBLISHED = Counter("outbox_events_published_total", "Outbox events published to NATS")
RELAY_LOCK = 727275


class OutboxRelay:
    def __init__(self, engine: AsyncEngine, nats_url: str, poll_seconds: float) -> None:
        self.engine = engine
        self.nats_url = nats_url
        self.poll_seconds = poll_seconds
        self.wakeup = asyncio.Event()

    async def publish_batch(self, nc: NATS, limit: int = 200) -> int:
        js = nc.jetstream()
        async with transaction(self.engine) as conn:
            locked = (
                await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({RELAY_LOCK})"))
            ).scalar()
            if not locked:
                return 0
            rows = (
                await conn.execute(
                    select(OUTBOX.c.seq, OUTBOX.c.id, OUTBOX.c.subject, OUTBOX.c.payload)
                    .where(OUTBOX.c.published_at.is_(None))
                    .order_by(OUTBOX.c.seq)
                    .limit(limit)
                )
            ).all()
            for row in rows:
                await js.publish(
                    row.subject, row.payload, headers={"Nats-Msg-Id": row.id}, timeout=2
                )
            if rows:
                await conn.execute(
                    update(OUTBOX)
                    .where(OUTBOX.c.seq.in_([r.seq for r in rows]))
                    .values(published_at=func.now())
                )
        PUBLISHED.inc(len(rows))
        return len(rows)

    async def listen(self, database_url: str) -> None:
        """Wakes the relay when any replica commits an event (LISTEN/NOTIFY)."""
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        try:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            async for _ in conn.notifies():
                self.wakeup.set()
        finally:
            await conn.close()

    async def run(self) -> None:
        nc: NATS | None = None
        try:
            while True:
                try:
                    if nc is None or nc.is_closed:
                        nc = await connect(self.nats_url, "outbox-relay")
                        await ensure_stream(nc)
                    while await self.publish_batch(nc) > 0:
                        pass
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # NATS down, restarting or its store lost: keep the rows
                    log.warning("outbox relay waiting", extra=log_fields(error=type(exc).__name__))
                    if nc is not None:  # reconnect and re-declare the stream next round
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(nc.close(), 2)
                    nc = None
                    await asyncio.sleep(0.5)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self.poll_seconds)
                self.wakeup.clear()
        finally:
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.drain()
