"""Outbox relay throughput: events/s from committed outbox rows to JetStream acks.

`python -m bench.relay` starts its own PostgreSQL and NATS, writes EVENTS outbox rows
straight into the database (many tenants, so every lane has work), runs one relay
replica in this process and times until every row is published. It also times the two
ways of publishing a batch, one ack awaited after another and all acks awaited together,
which is why the relay does the latter. Other benchmarks can call `relay_events_per_second`
with a stack of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import psycopg
from sendsar.calls.v1 import events_pb2

from services.common.settings import load_settings
from services.events import types
from services.events.jetstream import connect, ensure_stream
from services.events.publish import MSG_ID_HEADER, Message, Publisher
from services.events.relay import OutboxRelay
from tests.stack import Stack, new_workdir

EVENTS = 20_000
TENANTS = 64
COMPARE = 2_000  # messages per publishing method


def _payload(tenant_id: str, event_id: str) -> bytes:
    event = events_pb2.CallEvent(
        id=event_id, type=types.INVITE, tenant_id=tenant_id, recipient_user_ids=["bob"]
    )
    event.call.id = "call_bench"
    return event.SerializeToString()


def write_outbox(database_url: str, events: int) -> None:
    tenants = [f"ten_bench{uuid.uuid4().hex[:8]}_{i}" for i in range(TENANTS)]
    with psycopg.connect(database_url) as db, db.cursor() as cur:
        with cur.copy("COPY outbox (id, tenant_id, subject, payload) FROM STDIN") as copy:
            for i in range(events):
                tenant = tenants[i % TENANTS]
                event_id = f"evt_{uuid.uuid4().hex}"
                copy.write_row(
                    (
                        event_id,
                        tenant,
                        types.subject(tenant, types.INVITE),
                        _payload(tenant, event_id),
                    )
                )
        db.commit()


def _unpublished(database_url: str) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone()
        return int(row[0]) if row else 0


async def relay_events_per_second(database_url: str, nats_url: str, events: int = EVENTS) -> float:
    """Writes `events` outbox rows, then times one relay replica publishing all of them."""
    settings = load_settings(
        DATABASE_URL=database_url, NATS_URL=nats_url, OUTBOX_POLL_SECONDS=0.05, ENV="test"
    )
    await asyncio.to_thread(write_outbox, database_url, events)
    relay = OutboxRelay(settings)
    started = time.perf_counter()
    task = asyncio.create_task(relay.run())
    try:
        while True:
            left = await asyncio.to_thread(_unpublished, database_url)
            if not left:
                break
            await asyncio.sleep(0.05)
        return events / (time.perf_counter() - started)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def compare_publishing(database_url: str, nats_url: str) -> dict[str, float]:
    settings = load_settings(DATABASE_URL=database_url, NATS_URL=nats_url, ENV="test")
    nc = await connect(settings, "bench")
    try:
        await ensure_stream(nc, settings)
        js = nc.jetstream()

        def batch() -> list[Message]:
            tenant = "ten_compare"
            ids = [f"evt_{uuid.uuid4().hex}" for _ in range(COMPARE)]
            return [
                Message(i, types.subject(tenant, types.INVITE), _payload(tenant, i)) for i in ids
            ]

        one_by_one = batch()
        t0 = time.perf_counter()
        for m in one_by_one:
            await js.publish(m.subject, m.payload, headers={MSG_ID_HEADER: m.msg_id})
        sequential = COMPARE / (time.perf_counter() - t0)
        together = batch()
        publisher = Publisher(nc)
        t0 = time.perf_counter()
        for i in range(0, COMPARE, 500):
            await publisher.publish(together[i : i + 500], ack_wait=5)
        batched = COMPARE / (time.perf_counter() - t0)
        return {"sequential": sequential, "batched": batched}
    finally:
        await nc.drain()


async def measure() -> dict[str, float]:
    """Both figures on a PostgreSQL and NATS of their own (`make bench` calls this)."""
    stack = Stack(workdir=new_workdir())
    try:
        stack.start_postgres()
        stack.start_nats()
        ways = await compare_publishing(stack.database_url, stack.nats_url)
        rate = await relay_events_per_second(stack.database_url, stack.nats_url)
    finally:
        stack.stop_all()
    return {
        "relay_events_per_s": rate,
        "publish_sequential_per_s": ways["sequential"],
        "publish_batched_per_s": ways["batched"],
    }


def report(figures: dict[str, float]) -> None:
    print(
        f"  relay                        {figures['relay_events_per_s']:8.0f} events/s"
        f" ({EVENTS} outbox rows, {TENANTS} tenants, 1 replica; publishing:"
        f" {figures['publish_sequential_per_s']:.0f} msg/s one ack after another,"
        f" {figures['publish_batched_per_s']:.0f} msg/s acks awaited together)"
    )


if __name__ == "__main__":
    report(asyncio.run(measure()))
