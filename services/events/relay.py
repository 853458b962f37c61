"""Outbox relay: publishes committed call events to NATS JetStream, at least once, in
order within a lane, with no event able to hold up any other lane.

Lanes: the outbox is partitioned by tenant into OUTBOX_LANES lanes (a column the
database computes from tenant_id). Every relay replica runs one loop per lane; a batch
of a lane is taken under that lane's transaction-scoped advisory lock, so one replica
at a time publishes a lane, in sequence order, and more replicas share the lanes. The
lock lives as long as the batch's transaction: a replica frozen mid-batch loses it when
the database ends its idle transaction (DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS), never
later, and another replica takes the lane over. Session-level locks would survive a
SIGSTOP: the frozen process's kernel still answers TCP keepalives. Every replica hears
every NOTIFY; one that found its lane led by another replica takes it only once events
older than FOLLOW_SECONDS are left unpublished, so the leader answers alone and a dead,
frozen or slow leader is still replaced.

Bad events: a message NATS refuses (over its max_payload, a malformed subject) goes to
outbox_dead_letters at once; one that fails OUTBOX_MAX_ATTEMPTS rounds while JetStream
itself answers goes there too. Failures while NATS or the stream is away blame no event:
the lane backs off and tries again. Either way the lane moves on.

The event id is the Nats-Msg-Id, so a batch re-published after a crash (published to
JetStream, not yet marked in the database) is dropped by JetStream's de-duplication.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge
from psycopg.pq import TransactionStatus

from services.common.db import Pool, connect_listener, create_engine, open_pool
from services.common.logging import log_fields
from services.common.models import OUTBOX_LANES
from services.common.settings import Settings
from services.events import retention, types
from services.events.jetstream import connect, ensure_stream
from services.events.publish import Message, Outcome, Publisher, Result

log = logging.getLogger(__name__)

PUBLISHED = Counter("outbox_events_published_total", "Outbox events published to NATS")
DEAD = Counter(
    "outbox_dead_letters_total", "Outbox events moved to the dead-letter table", ["reason"]
)  # refused | failing
ROUNDS = Counter(
    "outbox_relay_rounds_total", "Relay rounds of this replica by what they found", ["found"]
)  # events | nothing | led_elsewhere (another replica held the lane)
LAG = Gauge("outbox_lag_seconds", "Age of the oldest unpublished outbox event (0: none)")

# Its NATS connection's name: its reply subjects start with _INBOX.<name>, which its NATS
# user may subscribe to (deploy/k8s/overlays/prod/nats-values.yaml).
CONNECTION_NAME = "outbox-relay"
LOCK_CLASS = 727275  # advisory locks (LOCK_CLASS, lane)
MAX_BACKOFF_SECONDS = 5.0
PROBE_SECONDS = 1.0
# A replica that found a lane led by another (a follower) leaves that lane to its
# leader: every replica hears every NOTIFY, and all but one would lose the lock race, a
# transaction each. A follower wakes FOLLOW_SECONDS after a NOTIFY (or at its poll) and
# takes the lane only when events older than that are still unpublished (the leader is
# dead, frozen or behind), with one read that takes no lock, so a leader never loses a
# race to a follower that had nothing to do.
FOLLOW_SECONDS = 0.25


# A lane's round in plain psycopg over the simple-query protocol, where one round trip can
# carry several statements: BEGIN + lock + read in one, mark + COMMIT in another. Through
# SQLAlchemy a round was six round trips (pre-ping, BEGIN, lock, read, mark, COMMIT) and
# the relay's share of the call path's CPU showed in the profile (bench/README.md). Only
# integers the relay itself holds are ever formatted into these statements.
#
# The lock is taken once, in a one-row subquery; the outbox is read only when it is held
# (a one-time filter: a lane another replica leads costs no scan), and the first column
# says whether it was, so a replica knows whether it leads the lane.
TAKE = """BEGIN;
SELECT l.held, o.seq, o.id, o.tenant_id, o.subject, o.payload, o.created_at, o.traceparent
FROM (SELECT pg_try_advisory_xact_lock({lock_class}, {lane}) AS held) l
LEFT JOIN LATERAL (
    SELECT * FROM outbox WHERE l.held AND lane = {lane} AND published_at IS NULL
    ORDER BY seq LIMIT {limit}
) o ON true
ORDER BY o.seq"""
# Marking published need not wait for the WAL flush: a mark lost in a database crash
# (the last ~0.6 s of commits at most) only re-publishes events that JetStream's
# de-duplication window (Nats-Msg-Id) still drops, and the next round starts sooner.
MARK = """SET LOCAL synchronous_commit = off;
UPDATE outbox SET published_at = now() WHERE seq = ANY('{{{seqs}}}'::bigint[]);
COMMIT"""
INSERT_DEAD = """
INSERT INTO outbox_dead_letters (seq, id, tenant_id, subject, payload, error, attempts, created_at)
VALUES (%(seq)s, %(id)s, %(tenant_id)s, %(subject)s, %(payload)s, %(error)s, %(attempts)s,
        %(created_at)s)"""
DELETE_DEAD = "DELETE FROM outbox WHERE seq = ANY(%(seqs)s)"
LEFT_BEHIND = """
SELECT EXISTS (SELECT 1 FROM outbox WHERE lane = %(lane)s AND published_at IS NULL
               AND created_at < now() - make_interval(secs => %(seconds)s))"""
# The poll, once per OUTBOX_POLL_SECONDS per replica: the age of the oldest unpublished
# event (the lag gauge) and the lanes with unpublished events (an index probe per lane),
# which it wakes. NOTIFY wakes lanes at once; this catches what a lost NOTIFY (a listener
# reconnecting) or a round cut short left, in one statement instead of a round per
# lane and replica every poll.
POLL = f"""
SELECT (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM outbox
        WHERE published_at IS NULL),
       ARRAY(SELECT l FROM generate_series(0, {OUTBOX_LANES - 1}) l
             WHERE EXISTS (SELECT 1 FROM outbox WHERE lane = l AND published_at IS NULL))"""


@dataclass(frozen=True)
class Pending:
    """An outbox row not yet published, as TAKE reads it."""

    seq: int
    id: str
    tenant_id: str
    subject: str
    payload: bytes
    created_at: datetime
    traceparent: str | None


@dataclass(frozen=True)
class Round:
    taken: int  # events published or dead-lettered
    stalled: bool  # some events could not be published: back off before the next round
    held: bool = False  # this replica had the lane's lock (False: another leads it)


class OutboxRelay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wakeups = [asyncio.Event() for _ in range(OUTBOX_LANES)]
        self.failures: dict[str, int] = {}  # event id -> failed rounds (this replica's count)

    # --- one batch of one lane ---------------------------------------------------------

    async def relay_lane(self, pool: Pool, publisher: Publisher, lane: int) -> Round:
        if not publisher.nc.is_connected:
            return Round(0, stalled=True)
        async with pool.connection() as conn:
            try:
                return await self._round(conn, publisher, lane)
            finally:
                # A round that failed half-way leaves its transaction open: end it here,
                # releasing the lane, rather than leave it to the pool's warning.
                if conn.info.transaction_status != TransactionStatus.IDLE and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("ROLLBACK")

    async def left_behind(self, pool: Pool, lane: int) -> bool:
        """Whether the lane has events older than FOLLOW_SECONDS still unpublished."""
        async with pool.connection() as conn:
            cur = await conn.execute(LEFT_BEHIND, {"lane": lane, "seconds": FOLLOW_SECONDS})
            row = await cur.fetchone()
        return bool(row and row[0])

    async def _round(
        self, conn: psycopg.AsyncConnection[Any], publisher: Publisher, lane: int
    ) -> Round:
        cur = conn.cursor()
        take = TAKE.format(
            lock_class=LOCK_CLASS, lane=int(lane), limit=int(self.settings.OUTBOX_BATCH_SIZE)
        )
        await cur.execute(take)
        cur.nextset()  # past BEGIN's result
        found = await cur.fetchall()
        held = bool(found[0][0])
        rows = [Pending(*row[1:]) for row in found if row[1] is not None]
        if not rows:  # nothing new, or another replica leads this lane right now
            await conn.execute("ROLLBACK")
            ROUNDS.labels("nothing" if held else "led_elsewhere").inc()
            return Round(0, stalled=False, held=held)
        outcomes = await publisher.publish(
            [Message(r.id, r.subject, bytes(r.payload), r.traceparent) for r in rows],
            self.settings.OUTBOX_PUBLISH_TIMEOUT_SECONDS,
        )
        published = [r for r, o in zip(rows, outcomes, strict=True) if o.result is Result.PUBLISHED]
        failed = [(r, o) for r, o in zip(rows, outcomes, strict=True) if o.result is Result.FAILED]
        # A failure counts against its event only while JetStream demonstrably works.
        blame = bool(failed) and (bool(published) or await self._jetstream_answers(publisher.nc))
        dead = self._dead(rows, outcomes, blame)
        if dead:
            await cur.executemany(INSERT_DEAD, [values for values, _ in dead])
            await cur.execute(DELETE_DEAD, {"seqs": [values["seq"] for values, _ in dead]})
        seqs = ",".join(str(int(r.seq)) for r in published)
        await conn.execute(MARK.format(seqs=seqs) if published else "COMMIT")
        ROUNDS.labels("events").inc()
        PUBLISHED.inc(len(published))
        for r in published:
            self.failures.pop(r.id, None)
        for values, reason in dead:
            self.failures.pop(values["id"], None)
            DEAD.labels(reason).inc()
            log.error(
                "outbox event dead-lettered",
                extra=log_fields(
                    tenantId=values["tenant_id"],
                    eventId=values["id"],
                    subject=values["subject"],
                    lane=lane,
                    attempts=values["attempts"],
                    error=values["error"],
                ),
            )
        if failed and not blame:
            log.warning(
                "outbox lane waiting for NATS",
                extra=log_fields(lane=lane, pending=len(failed), error=failed[0][1].error),
            )
        dead_ids = {values["id"] for values, _ in dead}
        return Round(
            len(published) + len(dead),
            stalled=any(r.id not in dead_ids for r, _ in failed),
            held=True,
        )

    def _dead(
        self, rows: Sequence[Pending], outcomes: list[Outcome], blame: bool
    ) -> list[tuple[dict[str, Any], str]]:
        """The dead-letter rows of this round, with the reason for each."""
        dead: list[tuple[dict[str, Any], str]] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome.result is Result.REFUSED:
                attempts, reason = self.failures.get(row.id, 0) + 1, "refused"
            elif outcome.result is Result.FAILED and blame:
                attempts = self.failures[row.id] = self.failures.get(row.id, 0) + 1
                if attempts < self.settings.OUTBOX_MAX_ATTEMPTS:
                    continue
                reason = "failing"
            else:
                continue
            values = {
                "seq": row.seq,
                "id": row.id,
                "tenant_id": row.tenant_id,
                "subject": row.subject,
                "payload": row.payload,
                "error": (outcome.error or "unknown")[:500],
                "attempts": attempts,
                "created_at": row.created_at,
            }
            dead.append((values, reason))
        return dead

    async def _jetstream_answers(self, nc: NATS) -> bool:
        """Whether JetStream and the stream are there (then failures are the events')."""
        try:
            # Short: the lane's transaction is open meanwhile (the idle-in-transaction bound).
            await asyncio.wait_for(nc.jetstream().stream_info(types.STREAM), PROBE_SECONDS)
            return True
        except NotFoundError:  # NATS lost its store: recreate the stream, blame nobody
            with contextlib.suppress(Exception):
                await ensure_stream(nc, self.settings)
            return False
        except Exception:
            return False

    # --- loops -------------------------------------------------------------------------

    async def _lane(self, pool: Pool, publisher: Publisher, lane: int) -> None:
        backoff = 0.0
        wakeup = self.wakeups[lane]
        # Whether this replica leads the lane: it had the lane's lock in its last round,
        # or nobody has said otherwise since it started.
        led = True
        while True:
            wakeup.clear()  # a NOTIFY from here on wakes the next wait
            result: Round | None = None
            try:
                if led or await self.left_behind(pool, lane):
                    result = await self.relay_lane(pool, publisher, lane)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away, or NATS trouble: this lane waits
                log.warning(
                    "outbox lane failed; retrying",
                    extra=log_fields(lane=lane, error=type(exc).__name__),
                )
                result = Round(0, stalled=True)
            if result is not None:
                if result.stalled:
                    backoff = min(max(0.5, backoff * 2), MAX_BACKOFF_SECONDS)
                    await asyncio.sleep(backoff)
                    continue
                backoff = 0.0
                led = result.held
                if result.taken >= self.settings.OUTBOX_BATCH_SIZE:
                    continue  # maybe more: at once
            await wakeup.wait()  # a NOTIFY, or the poll finding the lane's events
            if not led:
                await asyncio.sleep(FOLLOW_SECONDS)

    async def _poll(self, pool: Pool) -> None:
        while True:
            try:
                async with pool.connection() as conn:
                    row = await (await conn.execute(POLL)).fetchone()
                if row is not None:
                    LAG.set(float(row[0]))
                    for lane in row[1]:
                        self.wakeups[lane].set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox poll failed", extra=log_fields(error=type(exc).__name__))
            await asyncio.sleep(self.settings.OUTBOX_POLL_SECONDS)

    async def run(self) -> None:
        # Its own connections: a lane stuck on NATS holds one of these, never a request's.
        pool = await open_pool(self.settings, OUTBOX_LANES + 1)
        try:
            nc = await connect(self.settings, CONNECTION_NAME)
            try:
                await ensure_stream(nc, self.settings)
                publisher = Publisher(nc)
                await asyncio.gather(
                    *(self._lane(pool, publisher, lane) for lane in range(OUTBOX_LANES)),
                    self._poll(pool),
                )
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.drain(), 5)
        finally:
            await pool.close()

    async def listen(self) -> None:
        """Wakes the lanes a committed transaction wrote to, in every replica (LISTEN/
        NOTIFY): the payload lists them ("3,5"); an empty one wakes every lane."""
        conn = await connect_listener(self.settings)
        try:
            await conn.execute(f"LISTEN {types.NOTIFY_CHANNEL}")
            async for notify in conn.notifies():
                lanes = [int(n) for n in notify.payload.split(",") if n.isdigit()]
                for lane in lanes or range(OUTBOX_LANES):
                    if lane < OUTBOX_LANES:
                        self.wakeups[lane].set()
        finally:
            await conn.close()


@dataclass
class RelayJobs:
    """What a process hosting the relay runs: its loops, and what to close at the end."""

    background: list[Callable[[], Awaitable[None]]]
    close: Callable[[], Awaitable[None]]


def relay_jobs(settings: Settings) -> RelayJobs:
    relay = OutboxRelay(settings)
    engine = create_engine(settings, pool_size=1)  # retention's, a batch at a time

    async def prune() -> None:
        await retention.run(settings, engine, [retention.OUTBOX, retention.DEAD_LETTERS])

    return RelayJobs(background=[relay.run, relay.listen, prune], close=engine.dispose)
