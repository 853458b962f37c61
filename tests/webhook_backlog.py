"""A webhook backlog and its drain, shared by the drain test and `make bench`.

`build` writes many tenants' pending deliveries straight into the database, after an
ANALYZE of the empty table (and with autovacuum off for it), so the planner's
statistics describe an empty table while the backlog is there: the state in which the
old claim's plan turned quadratic. `drain` runs one dispatcher replica's delivery loop
(this process) against a receiver that answers 200 at once (tests/fast_receiver.py, a
process of its own) until nothing is pending, and returns when each row was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from devstack.procs import Proc, free_port, port_open, python_env, wait_until
from services.common.models import new_id
from services.common.settings import load_settings
from services.webhooks.delivery import Deliverer


def start_receiver(workdir: Path) -> tuple[Proc, str]:
    """The fast receiver in a process of its own: (the process, its URL)."""
    port = free_port()
    proc = Proc(
        "fast-receiver",
        [sys.executable, "-m", "tests.fast_receiver", str(port)],
        python_env({}),
        workdir,
    )
    wait_until(lambda: port_open(port), "the fast receiver", proc=proc)
    return proc, f"http://127.0.0.1:{port}/hooks"


def build(database_url: str, url: str, *, tenants: int, deliveries: int) -> list[str]:
    """`deliveries` pending rows spread evenly over `tenants` new tenants whose endpoint
    is `url`, all due now; returns the tenant ids."""
    ids = [new_id("tn") for _ in range(tenants)]
    with psycopg.connect(database_url, autocommit=True) as db:
        # Statistics of an empty table, kept while the backlog is there.
        db.execute("ALTER TABLE webhook_deliveries SET (autovacuum_enabled = false)")
        db.execute("ANALYZE webhook_deliveries")
        with db.transaction(), db.cursor() as cur:
            cur.executemany(
                "INSERT INTO tenants (id, name, calls_enabled, max_participants,"
                " ring_timeout_seconds, default_type) VALUES (%s, 'backlog', true, 8, 45, 'video')",
                [(t,) for t in ids],
            )
            cur.executemany(
                "INSERT INTO webhook_endpoints (tenant_id, url, events, secret)"
                " VALUES (%s, %s, '[]', 'whsec_backlog')",
                [(t, url) for t in ids],
            )
            body = '{"type":"call.ended","call":{"id":"cal_backlog"}}'
            with cur.copy(
                "COPY webhook_deliveries (id, tenant_id, event_id, event_type, body, status,"
                " attempts) FROM STDIN"
            ) as copy:
                for i in range(deliveries):
                    copy.write_row(
                        (
                            new_id("whd"),
                            ids[i % tenants],
                            new_id("evt"),
                            "call.ended",
                            body,
                            "pending",
                            0,
                        )
                    )
    return ids


@dataclass(frozen=True)
class Drain:
    started: datetime  # the database's clock when the delivery loop started
    delivered: list[tuple[str, datetime]]  # (tenant, delivered_at), in delivery order
    seconds: float  # wall time until nothing was pending
    cpu_seconds: float  # this process's CPU time meanwhile (the replica's delivery loop)

    @property
    def cpu_ms_per_delivery(self) -> float:
        return 1000 * self.cpu_seconds / len(self.delivered)

    @property
    def per_second(self) -> float:
        """Deliveries per second, from the start to the last delivery (database clock)."""
        return len(self.delivered) / (self.delivered[-1][1] - self.started).total_seconds()

    def halves(self) -> tuple[float, float]:
        """Seconds for the first half of the deliveries, and for the second."""
        times = [(at - self.started).total_seconds() for _, at in self.delivered]
        middle = times[len(times) // 2 - 1]
        return middle, times[-1] - middle

    def last_by_tenant(self) -> dict[str, float]:
        """Seconds from the start to each tenant's last delivery."""
        last: dict[str, float] = {}
        for tenant, at in self.delivered:
            last[tenant] = (at - self.started).total_seconds()
        return last

    def unfairness(self) -> float:
        """The latest tenant's last delivery over the median tenant's."""
        last = list(self.last_by_tenant().values())
        return max(last) / statistics.median(last)


def _pending(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        ).fetchone()
        return int(row[0]) if row else 0


async def drain(
    database_url: str,
    *,
    within: float,
    pending_left: Callable[[int], Awaitable[None]] | None = None,
    **settings: str,
) -> Drain:
    """Runs a delivery loop until nothing is pending (at most `within` seconds);
    `pending_left` hears the count at every look (every 0.2 s)."""
    config = load_settings(
        DATABASE_URL=database_url, ENV="test", WEBHOOK_ALLOW_PRIVATE_TARGETS="true", **settings
    )
    deliverer = Deliverer(config)
    with psycopg.connect(database_url, autocommit=True) as db:
        row = db.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        started: datetime = row[0]
    clock, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(deliverer.run())
    try:
        deadline = clock + within
        while (left := await asyncio.to_thread(_pending, database_url)) > 0:
            if pending_left is not None:
                await pending_left(left)
            if time.perf_counter() > deadline:
                raise AssertionError(f"{left} deliveries still pending after {within} s")
            if task.done():
                task.result()  # the loop died: say why
            await asyncio.sleep(0.2)
        seconds, cpu = time.perf_counter() - clock, time.process_time() - cpu
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with psycopg.connect(database_url, autocommit=True) as db:
        rows = db.execute(
            "SELECT tenant_id, delivered_at FROM webhook_deliveries WHERE status = 'delivered'"
            " ORDER BY delivered_at"
        ).fetchall()
    return Drain(started, [(t, at) for t, at in rows], seconds, cpu)
