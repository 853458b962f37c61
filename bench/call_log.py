"""Call log and usage on a large history: `GET /v1/calls` and `GET /v1/usage` latency.

`python -m bench.call_log` (and `make bench`, after the call-path figures) starts a stack
of its own (tests/stack.py), writes a history with COPY (bench/call_log_fixture.py: by
default 1,000,000 calls of one tenant among 100 other tenants' 500,000), then times
requests one at a time through Envoy with the tenant's API key:

- list pages: the first page, following pages (by token), by user, by room, by status,
  a week, a user's week (p50/p99 of each kind and of all together); a filter that
  matches nothing, which reads its whole per-page budget, is shown apart;
- usage over 31 days (windows spread over the year) and over 366 days;
- 1:1 lifecycles (start, accept, end) alone, then while 366-day usage queries run back
  to back: a usage query takes no lock a transition waits for, so they do not slow down
  beyond the CPU they share.

The bench's PostgreSQL gets `shared_buffers` of 1 GB (production-like; the embedded
server's default is 128 MB), and each kind is warmed up with as many requests as it is
measured with. `--explain` also prints the plans (EXPLAIN ANALYZE) of each kind of query.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
import psycopg

from bench.call_log_fixture import History, Shape, populate
from services.calls import call_log
from services.calls.log_filters import Filters
from services.calls.usage import USAGE
from tests.conftest import Tenant, create_tenant
from tests.stack import Stack, new_workdir

TARGETS = {"list_p99_ms": 20.0, "usage_31d_p99_ms": 200.0}
# The bench's PostgreSQL gets a production-like cache: the embedded server's default
# (128 MB) makes most pages of a 4 GB history a copy from the OS cache on every read.
SHARED_BUFFERS = "1GB"
# One tenant drives everything here: the fair-use limits would measure themselves.
UNLIMITED = {
    f"RATE_LIMIT_{scope}_{kind}": "1000000"
    for scope in ("TENANT", "CREDENTIAL")
    for kind in ("PER_SECOND", "BURST")
}


def figures(latencies: list[float]) -> dict[str, Any]:
    ms = sorted(1000 * s for s in latencies)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max_ms": round(ms[-1], 2),
    }


def timed(send: Callable[[], httpx.Response]) -> float:
    began = time.perf_counter()
    reply = send()
    elapsed = time.perf_counter() - began
    if reply.status_code != 200:
        raise RuntimeError(f"{reply.status_code}: {reply.text[:200]}")
    return elapsed


def iso(when: datetime) -> str:
    return when.isoformat()


class Requests:
    """Requests of each kind, drawn from the history at random (seeded)."""

    def __init__(self, api: httpx.Client, history: History) -> None:
        self.api = api
        self.history = history
        self.rng = random.Random(7)

    def week(self) -> dict[str, str]:
        span = (self.history.end - self.history.start - timedelta(days=7)).total_seconds()
        start = self.history.start + timedelta(seconds=self.rng.uniform(0, span))
        return {"from": iso(start), "to": iso(start + timedelta(days=7))}

    def list_kinds(self) -> dict[str, Callable[[], dict[str, Any]]]:
        h, rng = self.history, self.rng
        return {
            "first page": lambda: {},
            "by user": lambda: {"userId": rng.choice(h.users)},
            "by room": lambda: {"roomId": rng.choice(h.rooms)},
            "by status": lambda: {"status": rng.choice(("ended", "active"))},
            "a week": self.week,
            "a user's week": lambda: {"userId": rng.choice(h.users), **self.week()},
        }

    def page(self, params: dict[str, Any]) -> tuple[float, str]:
        began = time.perf_counter()
        reply = self.api.get("/v1/calls", params=params)
        elapsed = time.perf_counter() - began
        if reply.status_code != 200:
            raise RuntimeError(f"{reply.status_code}: {reply.text[:200]}")
        return elapsed, str(reply.json()["nextPageToken"])

    def lists(self, rounds: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        every: list[float] = []
        for name, make in self.list_kinds().items():
            latencies = [self.page(make())[0] for _ in range(rounds)]
            out[name] = figures(latencies)
            every += latencies
        following: list[float] = []
        token = ""
        while len(following) < rounds:  # pages 2, 3, ... of the whole log, by token
            elapsed, token = self.page({"pageToken": token} if token else {})
            if token:
                following.append(elapsed)
        out["next pages"] = figures(following)
        every += following
        out["all"] = figures(every)
        out["nothing matches (reads the 10,000-row budget)"] = figures(
            [self.page({"endReason": "busy"})[0] for _ in range(rounds)]
        )
        return out

    def usage(self, days: int, rounds: int) -> dict[str, Any]:
        h = self.history
        span = (h.end - h.start - timedelta(days=days)).total_seconds()
        latencies = []
        for _ in range(rounds):
            start = h.start + timedelta(seconds=self.rng.uniform(0, max(span, 0)))
            params = {"from": iso(start), "to": iso(start + timedelta(days=days))}
            latencies.append(timed(partial(self.api.get, "/v1/usage", params=params)))
        return figures(latencies)


def lifecycles(tenant: Tenant, rounds: int, during: Callable[[], None] | None) -> dict[str, Any]:
    """1:1 lifecycles one after another, alone or while `during` runs in a loop."""
    room = tenant.room("bench_a", "bench_b")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set() and during is not None:
            during()

    background = threading.Thread(target=loop)
    latencies: list[float] = []
    with tenant.user("bench_a") as a, tenant.user("bench_b") as b:
        background.start()
        try:
            for _ in range(rounds):
                began = time.perf_counter()
                call_id = a.post(f"/chat/rooms/{room}/calls", json={}).json()["call"]["id"]
                b.post(f"/chat/rooms/{room}/calls/{call_id}/accept", json={})
                reply = a.post(f"/chat/rooms/{room}/calls/{call_id}/end", json={})
                latencies.append(time.perf_counter() - began)
                if reply.status_code != 200:
                    raise RuntimeError(f"{reply.status_code}: {reply.text[:200]}")
        finally:
            stop.set()
            background.join()
    return figures(latencies)


def explain(database_url: str, tenant_id: str, history: History) -> None:
    """The plan of each kind of query, as run (EXPLAIN ANALYZE, BUFFERS)."""
    end = history.end - timedelta(days=3)
    week_start = end - timedelta(days=7)
    kinds = {
        "first page": Filters(),
        "by user": Filters(user_id=history.users[1]),
        "by room": Filters(room_id=history.rooms[1]),
        "by status": Filters(status="active"),
        "a user's week": Filters(user_id=history.users[1], start=week_start, end=end),
        "nothing matches": Filters(end_reason="busy"),
    }
    with psycopg.connect(database_url, autocommit=True) as db:
        for name, filters in kinds.items():
            plan = call_log.listing(tenant_id, filters, after=None, size=50)
            rows = db.execute("EXPLAIN (ANALYZE, BUFFERS) " + plan.sql, plan.params).fetchall()
            print(f"\n-- list, {name}\n" + "\n".join(r[0] for r in rows))
        params = {"tenant": tenant_id, "start": end - timedelta(days=31), "end": end}
        rows = db.execute("EXPLAIN (ANALYZE, BUFFERS) " + USAGE, params).fetchall()
        print("\n-- usage, 31 days\n" + "\n".join(r[0] for r in rows))


def measure(
    calls: int = Shape.calls, rounds: int = 200, show_plans: bool = False
) -> dict[str, Any]:
    shape = Shape(calls=calls)
    stack = Stack(workdir=new_workdir(), settings=UNLIMITED)
    try:
        stack.start_postgres()
        with psycopg.connect(stack.database_url, autocommit=True) as db:
            db.execute(f"ALTER SYSTEM SET shared_buffers = '{SHARED_BUFFERS}'")
        stack.procs["postgres"].stop()  # the setting needs a restart; start_all does it
        stack.start_all()
        tenant = create_tenant(stack, "bench")
        began = time.monotonic()
        history = populate(stack.database_url, tenant.tenant_id, shape)
        written = time.monotonic() - began
        if show_plans:
            explain(stack.database_url, tenant.tenant_id, history)
        with tenant.api() as api:
            requests = Requests(api, history)
            load_before = os.getloadavg()
            requests.lists(rounds)  # warm-up: caches, prepared statements
            lists = requests.lists(rounds)
            usage_31 = requests.usage(31, rounds=max(20, rounds // 4))
            usage_366 = requests.usage(366, rounds=5)

            def year() -> None:
                requests.usage(366, rounds=1)

            alone = lifecycles(tenant, rounds=max(20, rounds // 4), during=None)
            with_usage = lifecycles(tenant, rounds=max(20, rounds // 4), during=year)
            load_after = os.getloadavg()
    finally:
        stack.stop_all()
    result: dict[str, Any] = {
        "history": {
            "calls": shape.calls,
            "other_tenants": shape.other_tenants,
            "other_calls": shape.other_tenants * shape.other_calls,
            "days": shape.days,
            "written_s": round(written, 1),
        },
        "shared_buffers": SHARED_BUFFERS,
        # Other work on the machine (1-minute load average, before and after): on 2 cores
        # anything above ~2 means the figures wait for CPU.
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "list": lists,
        "usage_31d": usage_31,
        "usage_366d": usage_366,
        "lifecycle_alone": alone,
        "lifecycle_during_usage_366d": with_usage,
    }
    result["met"] = {
        "list_p99": lists["all"]["p99_ms"] < TARGETS["list_p99_ms"],
        "usage_31d_p99": usage_31["p99_ms"] < TARGETS["usage_31d_p99_ms"],
    }
    return result


def report(result: dict[str, Any]) -> None:
    h = result["history"]
    print(
        f"\ncall log and usage — {h['calls']:,} calls of one tenant, {h['other_calls']:,} of"
        f" {h['other_tenants']} others, over {h['days']} days (written in {h['written_s']} s);"
        f" shared_buffers {result['shared_buffers']}, load average {result['load_average']}"
    )
    for name, f in result["list"].items():
        print(f"  list, {name:<46} p50 {f['p50_ms']:6.2f}  p99 {f['p99_ms']:6.2f} ms  ({f['n']})")
    for name in ("usage_31d", "usage_366d", "lifecycle_alone", "lifecycle_during_usage_366d"):
        f = result[name]
        print(f"  {name:<52} p50 {f['p50_ms']:7.1f}  p99 {f['p99_ms']:7.1f} ms  ({f['n']})")
    print(
        "  targets: "
        + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["met"].items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=Shape.calls, help="of the large tenant")
    parser.add_argument("--rounds", type=int, default=200, help="requests of each list kind")
    parser.add_argument("--explain", action="store_true", help="print the query plans")
    args = parser.parse_args()
    report(measure(args.calls, args.rounds, args.explain))


if __name__ == "__main__":
    main()
