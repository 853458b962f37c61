"""GET /v1/events through Envoy: the tenant's events in commit order from a cursor that
never skips one committed later (transactions committing out of sequence order
included), `types` and `limit`, `wait` long polling woken by the outbox's NOTIFY, at most
EVENTS_MAX_WAITS_PER_TENANT waits per tenant, tenant isolation and bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from sendsar.calls.v1 import events_pb2

from services.common.models import new_id
from services.events import types
from services.tenant.feed import MAX_WAIT_SECONDS
from tests.conftest import Tenant, error_reason
from tests.stack import Stack

FEED = "/v1/events"


def read(tenant: Tenant, **params: Any) -> dict[str, Any]:
    with httpx.Client(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=60
    ) as api:
        reply = api.get(FEED, params=params)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def read_all(tenant: Tenant, after: str = "", **params: Any) -> tuple[list[dict[str, Any]], str]:
    """Every event after the cursor, page by page: (the events, the last cursor)."""
    events: list[dict[str, Any]] = []
    while True:
        page = read(tenant, after=after, limit=500, **params)
        events += page["events"]
        after = page["nextCursor"]
        if not page["events"]:
            return events, after


def outbox_ids(stack: Stack, tenant_id: str) -> list[str]:
    """The tenant's events as the database holds them (first parts only)."""
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        rows = db.execute(
            "SELECT id FROM outbox WHERE tenant_id = %s AND position('.' in id) = 0"
            " ORDER BY xid, seq",
            (tenant_id,),
        ).fetchall()
    return [r[0] for r in rows]


def event_row(tenant_id: str, event_type: str = types.ENDED) -> tuple[str, str, str, bytes]:
    """An outbox row (id, tenant, subject, payload) as the call path writes one."""
    event = events_pb2.CallEvent(
        id=new_id("evt"), type=event_type, tenant_id=tenant_id, recipient_user_ids=["bob"]
    )
    event.call.id = new_id("call")
    event.occurred_at.GetCurrentTime()
    return event.id, tenant_id, types.subject(tenant_id, event_type), event.SerializeToString()


INSERT = (
    "INSERT INTO outbox (id, tenant_id, subject, payload, published_at)"
    " VALUES (%s, %s, %s, %s, now())"  # published: the stack's relay leaves them alone
)


def call_cycle(tenant: Tenant, room: str, caller: str) -> None:
    """A start and an end: a few events in two transactions."""
    with tenant.user(caller) as user:
        reply = user.post(f"/chat/rooms/{room}/calls", json={})
        assert reply.status_code == 200, reply.text
        call_id = reply.json()["call"]["id"]
        assert user.post(f"/chat/rooms/{room}/calls/{call_id}/end", json={}).status_code == 200


def test_events_come_in_commit_order_with_their_webhook_body(stack: Stack, tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    call_cycle(tenant, room, "alice")
    events, cursor = read_all(tenant)
    assert [e["id"] for e in events] == outbox_ids(stack, tenant.tenant_id)
    assert [e["type"] for e in events][:2] == ["call.started", "call.invite"]
    assert events[-1]["type"] == "call.ended" and events[-1]["call"]["status"] == "ended"
    for event in events:
        assert event["tenantId"] == tenant.tenant_id and event["occurredAt"].endswith("Z")
        assert event.get("recipientUserIds", []) == []
    # Nothing new: the same cursor back, no events.
    again = read(tenant, after=cursor)
    assert again == {"events": [], "nextCursor": cursor}
    # types and limit.
    ended = read(tenant, types="call.ended,call.missed")["events"]
    assert ended == [e for e in events if e["type"] in ("call.ended", "call.missed")]
    assert "call.ended" in {e["type"] for e in ended}
    first = read(tenant, limit=1)
    assert [e["id"] for e in first["events"]] == [events[0]["id"]]
    second = read(tenant, limit=1, after=first["nextCursor"])
    assert [e["id"] for e in second["events"]] == [events[1]["id"]]


def test_a_transaction_committing_after_a_later_one_is_not_skipped(
    stack: Stack, tenant: Tenant
) -> None:
    """The out-of-order commit, made on purpose: T1 writes an event and stays open, T2
    writes one and commits. Sequence order says T1's event comes first, so a reader must
    not be handed T2's (and move its cursor past T1's) until T1 has ended: then both come,
    T1's first."""
    _, cursor = read_all(tenant)
    early, late = event_row(tenant.tenant_id), event_row(tenant.tenant_id)
    with psycopg.connect(stack.database_url) as t1:
        t1.execute(INSERT, early)  # takes the smaller seq; not committed yet
        with psycopg.connect(stack.database_url) as t2:
            t2.execute(INSERT, late)
            t2.commit()
        held = read(tenant, after=cursor)
        assert held["events"] == [] and held["nextCursor"] == cursor
        t1.commit()
    events, _ = read_all(tenant, after=cursor)
    assert [e["id"] for e in events] == [early[0], late[0]]


def test_the_feed_under_concurrent_writers_has_no_gaps(stack: Stack, tenant: Tenant) -> None:
    """Many transitions at once from several clients (both calls workers), read from the
    start while they run and after: every event the database holds, each once, in the
    feed's order."""
    rooms = [tenant.room(f"a{i}", f"b{i}") for i in range(12)]
    seen: list[str] = []
    done = threading.Event()

    def follow() -> None:
        cursor = ""
        while True:
            finished = done.is_set()
            page = read(tenant, after=cursor, limit=7)  # small pages: many cursors
            seen.extend(e["id"] for e in page["events"])
            cursor = page["nextCursor"]
            if finished and not page["events"]:
                return

    def write(i: int) -> None:
        for _ in range(3):
            call_cycle(tenant, rooms[i], f"a{i}")

    reader = threading.Thread(target=follow)
    reader.start()
    with ThreadPoolExecutor(len(rooms)) as pool:
        list(pool.map(write, range(len(rooms))))
    done.set()
    reader.join(60)
    held = outbox_ids(stack, tenant.tenant_id)
    assert len(held) >= len(rooms) * 3 * 4  # started, invite, ended, ... per cycle
    assert len(seen) == len(set(seen)), "an event came twice"
    assert seen == held


async def test_a_waiting_request_is_woken_by_a_commit_after_the_route_default(
    tenant: Tenant,
) -> None:
    """wait=30 through Envoy (its default route times out at 15 s and idles out at 20 s);
    the event comes 21 s in and the request answers with it, long before its 30 s were
    up (a margin no loaded machine's start request takes)."""
    _, cursor = await asyncio.to_thread(read_all, tenant)
    room = await asyncio.to_thread(tenant.room, "alice", "bob")
    alice = await asyncio.to_thread(tenant.user, "alice")  # the session, before the wait
    try:
        started = time.monotonic()
        waiting = asyncio.create_task(
            asyncio.to_thread(read, tenant, after=cursor, wait=MAX_WAIT_SECONDS)
        )
        await asyncio.sleep(21)
        assert not waiting.done()
        written = time.monotonic()
        reply = await asyncio.to_thread(alice.post, f"/chat/rooms/{room}/calls", json={})
        assert reply.status_code == 200, reply.text
        page = await waiting
        answered = time.monotonic()
        call_id = reply.json()["call"]["id"]
        assert alice.post(f"/chat/rooms/{room}/calls/{call_id}/end", json={}).status_code == 200
    finally:
        alice.close()
    assert page["events"] and page["events"][0]["type"] == "call.started"
    assert answered - written < 6 and answered - started < MAX_WAIT_SECONDS - 3


def test_a_wait_with_nothing_new_returns_empty_after_its_seconds(tenant: Tenant) -> None:
    _, cursor = read_all(tenant)
    started = time.monotonic()
    page = read(tenant, after=cursor, wait=2)
    assert page == {"events": [], "nextCursor": cursor}
    assert 1.9 <= time.monotonic() - started < 6


def test_waits_are_bounded_per_tenant(new_tenant: Callable[..., Tenant]) -> None:
    """EVENTS_MAX_WAITS_PER_TENANT (10) waits of one tenant at once; the 11th gets 429,
    and another tenant still waits."""
    busy, other = new_tenant(), new_tenant()
    _, cursor = read_all(busy)
    with ThreadPoolExecutor(11) as pool:
        holders = [pool.submit(read, busy, after=cursor, wait=6) for _ in range(10)]
        time.sleep(2)  # all ten are waiting
        with httpx.Client(
            base_url=busy.rest, headers={"Authorization": f"Bearer {busy.api_key}"}, timeout=30
        ) as api:
            reply = api.get(FEED, params={"after": cursor, "wait": 5})
        assert reply.status_code == 429, reply.text
        assert error_reason(reply) == "TOO_MANY_WAITS"
        assert read(other, wait=1)["events"] == []  # another tenant is not affected
        assert [h.result()["events"] for h in holders] == [[]] * 10
    assert read(busy, after=cursor, wait=1)["events"] == []  # slots free again


def test_tenants_see_only_their_own_events(stack: Stack, new_tenant: Callable[..., Tenant]) -> None:
    a, b = new_tenant(), new_tenant()
    call_cycle(a, a.room("alice", "bob"), "alice")
    a_events, _ = read_all(a)
    b_events, _ = read_all(b)
    assert a_events and b_events == []
    # A cursor of A's used by B reads B's events only (none).
    assert read(b, after=read(a, limit=1)["nextCursor"])["events"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"wait": 0}, "wait"),
        ({"wait": 31}, "wait"),
        ({"after": "not-a-cursor"}, "after"),
        ({"after": "ZXwxMnxhYmM="}, "after"),  # a token of ours with a bad field
        ({"types": "call.ended,call.bogus"}, "types"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    tenant: Tenant, params: dict[str, Any], field: str
) -> None:
    with tenant.api() as api:
        reply = api.get(FEED, params=params)
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == "INVALID_ARGUMENT"
    bad = next(d for d in reply.json()["details"] if d["@type"].endswith("BadRequest"))
    assert bad["fieldViolations"][0]["field"] == field


def test_the_feed_takes_the_api_key_only(tenant: Tenant) -> None:
    with tenant.user("alice") as user:
        assert user.get(FEED).status_code == 403
