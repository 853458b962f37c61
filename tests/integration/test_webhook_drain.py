"""A large webhook backlog drains at full speed whatever the planner's statistics say
(issue 31): 20,000 pending deliveries of 50 tenants, statistics of an empty table (the
ANALYZE ran before the insert, autovacuum is off for the table), one dispatcher replica's
delivery loop against a receiver that answers at once.

The PostgreSQL is this module's own, with pg_stat_statements loaded, so every claim
statement is timed by the server itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests import webhook_backlog
from tests.stack import Stack, new_workdir

TENANTS = 50
DELIVERIES = 20_000
CLAIM_MARK = "WITH RECURSIVE walk"


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Stack]:
    stack = Stack(
        workdir=new_workdir(),
        postgres_settings=("shared_preload_libraries=pg_stat_statements",),
    )
    try:
        stack.start_postgres()
        with psycopg.connect(stack.database_url, autocommit=True) as db:
            db.execute("CREATE EXTENSION pg_stat_statements")
        yield stack
    finally:
        stack.stop_all()


def claim_stats(database_url: str) -> dict[str, Any]:
    """What the server counted for the claim statement since the last reset."""
    with psycopg.connect(database_url, autocommit=True) as db:
        cur = db.execute(
            "SELECT sum(calls), sum(rows), max(max_exec_time),"
            " sum(shared_blks_hit + shared_blks_read)"
            " FROM pg_stat_statements WHERE query LIKE %s",
            (f"%{CLAIM_MARK}%",),
        )
        row = cur.fetchone()
    assert row is not None and row[0], "no claim statement was counted"
    calls, rows, slowest, blocks = row
    return {"calls": int(calls), "rows": int(rows), "max_ms": float(slowest), "blocks": int(blocks)}


@pytest.mark.slow
async def test_a_backlog_drains_linearly_and_fairly_with_stale_statistics(
    own_postgres: Stack,
) -> None:
    db_url = own_postgres.database_url
    receiver, url = webhook_backlog.start_receiver(own_postgres.workdir)
    try:
        tenants = webhook_backlog.build(db_url, url, tenants=TENANTS, deliveries=DELIVERIES)
        with psycopg.connect(db_url, autocommit=True) as db:
            row = db.execute(
                "SELECT reltuples FROM pg_class WHERE relname = 'webhook_deliveries'"
            ).fetchone()
            assert row is not None and row[0] <= 0, "the statistics must describe an empty table"
            db.execute("SELECT pg_stat_statements_reset()")

        halfway: dict[str, Any] = {}

        async def at_half(left: int) -> None:
            if left <= DELIVERIES // 2 and not halfway:
                halfway.update(claim_stats(db_url))

        drained = await webhook_backlog.drain(db_url, within=300, pending_left=at_half)
    finally:
        receiver.stop()

    # Everything delivered once, on the first attempt.
    assert len(drained.delivered) == DELIVERIES
    with psycopg.connect(db_url, autocommit=True) as db:
        row = db.execute("SELECT max(attempts), min(attempts) FROM webhook_deliveries").fetchone()
    assert row == (1, 1)

    # Linear: the second 10,000 took no longer than the first (a quarter's slack for a
    # shared machine's noise; the quadratic claim took minutes for the first half).
    first, second = drained.halves()
    assert second <= 1.25 * first + 1.0, (first, second)

    # Fair: no tenant's last delivery later than twice the median tenant's.
    assert set(drained.last_by_tenant()) == set(tenants)
    assert drained.unfairness() <= 2.0, drained.last_by_tenant()

    # No claim statement over 50 ms, timed by the server.
    total = claim_stats(db_url)
    assert total["max_ms"] < 50.0, total
    # And the work per claimed row did not grow with the backlog: buffers touched per row
    # leased in the second half are no more than in the first (what a statement reads
    # does not depend on the machine's load, unlike its time).
    assert halfway, "the drain never passed its half"
    first_blocks = halfway["blocks"] / max(1, halfway["rows"])
    second_blocks = (total["blocks"] - halfway["blocks"]) / max(1, total["rows"] - halfway["rows"])
    assert second_blocks <= 1.5 * first_blocks + 1, (halfway, total)
    assert first_blocks < 100, halfway  # index pages per row, never the backlog
    print(
        f"\ndrain: {drained.per_second:.0f} deliveries/s; halves {first:.1f} s / {second:.1f} s;"
        f" unfairness {drained.unfairness():.2f}; claims {total}"
    )
