"""Webhook drain: deliveries/s for a 20,000 backlog, one dispatcher replica.

`python -m bench.webhooks` starts its own PostgreSQL, writes 20,000 pending deliveries of
50 tenants with the table's statistics stale (tests/webhook_backlog.py: ANALYZE of the
empty table before the insert), runs one replica's delivery loop in this process (on
uvloop, as the services run) against a receiver that answers 200 at once (a process of
its own) and times until nothing is pending. `make bench` calls `measure`.
"""

from __future__ import annotations

import uvloop

from tests import webhook_backlog
from tests.stack import Stack, new_workdir

DELIVERIES = 20_000
TENANTS = 50


async def _drain(database_url: str, url: str) -> dict[str, float]:
    webhook_backlog.build(database_url, url, tenants=TENANTS, deliveries=DELIVERIES)
    drained = await webhook_backlog.drain(database_url, within=600)
    first, second = drained.halves()
    return {
        "webhook_drain_per_s": drained.per_second,
        "first_half_s": first,
        "second_half_s": second,
        "unfairness": drained.unfairness(),
        "cpu_ms_per_delivery": drained.cpu_ms_per_delivery,
    }


def measure() -> dict[str, float]:
    """The drain on a PostgreSQL of its own (`make bench` calls this)."""
    stack = Stack(workdir=new_workdir())
    receiver = None
    try:
        stack.start_postgres()
        receiver, url = webhook_backlog.start_receiver(stack.workdir)
        return uvloop.run(_drain(stack.database_url, url))
    finally:
        if receiver is not None:
            receiver.stop()
        stack.stop_all()


def report(figures: dict[str, float]) -> None:
    print(
        f"  webhook drain                {figures['webhook_drain_per_s']:8.0f} deliveries/s"
        f" for a {DELIVERIES:,} backlog ({TENANTS} tenants, stale statistics, 1 replica;"
        f" halves {figures['first_half_s']:.1f} s / {figures['second_half_s']:.1f} s, last"
        f" tenant done at {figures['unfairness']:.2f}x the median tenant;"
        f" {figures['cpu_ms_per_delivery']:.2f} ms of the replica's CPU per delivery)"
    )


if __name__ == "__main__":
    report(measure())
