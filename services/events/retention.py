"""Retention: finished rows older than RETENTION_SECONDS are deleted in small batches.

Each batch is one short transaction (rows picked oldest first through an index, with
SKIP LOCKED so replicas pruning at once never wait on each other), so pruning a large
backlog never holds locks or a long transaction. Published outbox rows and dead letters
go with the relay; finished (delivered or failed) webhook deliveries with the webhook
dispatcher. Pending deliveries and unpublished events are never pruned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import delete, func, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import transaction
from services.common.logging import log_fields
from services.common.models import DEAD_LETTERS as DEAD_LETTER_TABLE
from services.common.models import DELIVERIES
from services.common.models import OUTBOX as OUTBOX_TABLE
from services.common.settings import Settings

log = logging.getLogger(__name__)

PRUNED = Counter("retention_pruned_rows_total", "Rows deleted by retention", ["table"])


@dataclass(frozen=True)
class Target:
    table: Any
    key: Any  # the primary key column
    age: Any  # the timestamp column the age is counted from (indexed)
    finished: Any  # which rows may go at all


OUTBOX = Target(
    OUTBOX_TABLE,
    OUTBOX_TABLE.c.seq,
    OUTBOX_TABLE.c.created_at,
    OUTBOX_TABLE.c.published_at.is_not(None),
)
DEAD_LETTERS = Target(
    DEAD_LETTER_TABLE, DEAD_LETTER_TABLE.c.seq, DEAD_LETTER_TABLE.c.failed_at, true()
)
WEBHOOK_DELIVERIES = Target(
    DELIVERIES, DELIVERIES.c.id, DELIVERIES.c.created_at, DELIVERIES.c.status != "pending"
)


async def prune(engine: AsyncEngine, target: Target, *, older_than: timedelta, batch: int) -> int:
    """Deletes the target's finished rows older than `older_than`; returns how many."""
    picked = (
        select(target.key)
        .where(target.finished, target.age < func.now() - older_than)
        .order_by(target.age)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    total = 0
    while True:
        async with transaction(engine) as conn:
            result = await conn.execute(
                delete(target.table).where(target.key.in_(picked.scalar_subquery()))
            )
        count = int(result.rowcount or 0)
        total += count
        PRUNED.labels(target.table.name).inc(count)
        if count < batch:
            return total
        await asyncio.sleep(0)  # let requests in between batches


async def run(settings: Settings, engine: AsyncEngine, targets: Sequence[Target]) -> None:
    """Prunes the targets every RETENTION_INTERVAL_SECONDS for as long as the process lives."""
    older_than = timedelta(seconds=settings.RETENTION_SECONDS)
    while True:
        for target in targets:
            try:
                count = await prune(
                    engine, target, older_than=older_than, batch=settings.RETENTION_BATCH_SIZE
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: next interval
                log.warning(
                    "retention failed",
                    extra=log_fields(table=target.table.name, error=type(exc).__name__),
                )
                continue
            if count:
                log.info("retention pruned", extra=log_fields(table=target.table.name, rows=count))
        await asyncio.sleep(settings.RETENTION_INTERVAL_SECONDS)
