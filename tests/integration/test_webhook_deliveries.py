"""Webhook delivery records through REST via Envoy: receivers that fail on purpose (500,
a timeout, a refused connection), GET /v1/webhook/deliveries with its filters and pages,
a retry after failure, replays (in order, with the original ids and bodies, and one
tenant's replay of 10,000 events beside another tenant's live deliveries), tenant
isolation and bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sendsar.calls.v1 import events_pb2

from devstack.procs import free_port
from services.common.models import new_id
from services.events import types
from services.webhooks import signing
from tests.conftest import Tenant, error_reason
from tests.integration.test_webhooks import (
    StartReceiver,
    delete_webhook,
    put_webhook,
    start_call,
)
from tests.stack import Stack

DELIVERIES = "/v1/webhook/deliveries"
REPLAY = "/v1/webhook/replay"
WAIT = 30.0


def api_get(tenant: Tenant, path: str, **params: Any) -> httpx.Response:
    with tenant.api() as api:
        return api.get(path, params=params)


def api_post(tenant: Tenant, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    with tenant.api() as api:
        return api.post(path, json=body or {})


def listed(tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    reply = api_get(tenant, DELIVERIES, **params)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["deliveries"])


async def until_listed(
    tenant: Tenant, done: Callable[[list[dict[str, Any]]], bool], what: str, **params: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while True:
        rows = await asyncio.to_thread(listed, tenant, **params)
        if done(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries never reached {what}: {rows}")
        await asyncio.sleep(0.3)


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- failures, as recorded ------------------------------------------------------------


async def test_failures_are_recorded_by_status_code_and_a_fixed_phrase(
    new_tenant: Callable[..., Tenant], hook_receiver: StartReceiver
) -> None:
    """Three tenants, three ways to fail: a 500, a receiver slower than the 5 s timeout,
    a port nobody listens on. What the receiver sent back never shows."""
    failing, hanging, refused = new_tenant(), new_tenant(), new_tenant()
    answers_500 = await hook_receiver(script=[500] * 1000)
    slow = await hook_receiver(delay=30.0)
    await put_webhook(failing, answers_500.url, ["call.started"])
    await put_webhook(hanging, slow.url, ["call.started"])
    await put_webhook(refused, f"http://127.0.0.1:{free_port()}/hooks", ["call.started"])
    try:
        for t in (failing, hanging, refused):
            await start_call(t, "alice", "bob")

        def tried(rows: list[dict[str, Any]]) -> bool:
            return bool(rows) and rows[0]["attempts"] >= 1

        (row,) = await until_listed(failing, tried, "a failed attempt")
        assert row["status"] == "pending" and row["eventType"] == "call.started"
        assert row["lastStatusCode"] == 500 and row["lastError"] == "http 500"
        assert row["url"] == answers_500.url
        assert row["eventId"].startswith("evt_") and row["id"].startswith("whd_")
        for field in ("createdAt", "lastAttemptAt", "nextAttemptAt"):
            assert row[field].endswith("Z"), row
        (row,) = await until_listed(hanging, tried, "a timed-out attempt")
        assert row["lastError"] == "timeout" and "lastStatusCode" not in row
        (row,) = await until_listed(refused, tried, "a refused attempt")
        assert row["lastError"] == "connection refused" and "lastStatusCode" not in row
        for t in (failing, hanging, refused):
            reply = api_get(t, DELIVERIES)
            assert "receiver-private-response-text" not in reply.text
    finally:
        for t in (failing, hanging, refused):
            await delete_webhook(t)


# --- retry ------------------------------------------------------------------------------


async def test_a_failed_delivery_is_sent_again_on_request(
    new_tenant: Callable[..., Tenant], hook_receiver: StartReceiver
) -> None:
    tenant = new_tenant()
    broken = await hook_receiver(script=[500] * 1000)
    secret = await put_webhook(tenant, broken.url, ["call.started"])
    await start_call(tenant, "alice", "bob")
    first = await broken.wait_for("call.started", status=500)
    (row,) = await until_listed(tenant, lambda rs: bool(rs) and rs[0]["attempts"] >= 1, "tried")
    # Pending: a retry now is refused, nothing changes.
    reply = await asyncio.to_thread(api_post, tenant, f"{DELIVERIES}/{row['id']}/retry")
    assert reply.status_code == 409, reply.text
    assert error_reason(reply) == "DELIVERY_IN_PROGRESS"
    # The endpoint goes away: the delivery fails for good at its next attempt.
    await delete_webhook(tenant)
    (row,) = await until_listed(tenant, lambda rs: rs[0]["status"] == "failed", "failed")
    assert row["lastError"] == "endpoint removed"
    assert [d["id"] for d in listed(tenant, status="failed")] == [row["id"]]
    assert listed(tenant, status="pending") == []
    # No endpoint: nothing to retry to.
    reply = await asyncio.to_thread(api_post, tenant, f"{DELIVERIES}/{row['id']}/retry")
    assert reply.status_code == 404 and error_reason(reply) == "WEBHOOK_NOT_SET"

    fixed = await hook_receiver()
    secret = await put_webhook(tenant, fixed.url, ["call.started"])
    reply = await asyncio.to_thread(api_post, tenant, f"{DELIVERIES}/{row['id']}/retry")
    assert reply.status_code == 200, reply.text
    again = reply.json()["delivery"]
    assert again["id"] == row["id"] and again["status"] == "pending" and again["attempts"] == 0
    hit = await fixed.wait_for("call.started")
    assert hit.headers["Sendsar-Event-Id"] == first.headers["Sendsar-Event-Id"]
    assert hit.body == first.body  # the same bytes, signed afresh with the current secret
    assert signing.verify(secret, hit.headers["Sendsar-Signature"], hit.body)
    (row,) = await until_listed(tenant, lambda rs: rs[0]["status"] == "delivered", "delivered")
    assert row["attempts"] == 1 and row["lastStatusCode"] == 200 and "lastError" not in row
    assert "nextAttemptAt" not in row

    # A delivered one can be sent again too.
    reply = await asyncio.to_thread(api_post, tenant, f"{DELIVERIES}/{row['id']}/retry")
    assert reply.status_code == 200, reply.text
    await fixed.until(lambda: len(fixed.of("call.started")) == 2, "the second delivery")
    assert len({h.headers["Sendsar-Event-Id"] for h in fixed.hits}) == 1


# --- replay -------------------------------------------------------------------------------


async def test_a_replay_resends_the_window_in_order_with_the_original_ids(
    stack: Stack, new_tenant: Callable[..., Tenant], hook_receiver: StartReceiver
) -> None:
    tenant = new_tenant()
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url)  # every type
    window_start = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(3):
        room, call_id = await start_call(tenant, "alice", "bob")
        reply = await asyncio.to_thread(
            tenant.user("alice").post, f"/chat/rooms/{room}/calls/{call_id}/end", json={}
        )
        assert reply.status_code == 200, reply.text
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM outbox WHERE tenant_id = %s AND position('.' in id) = 0"
                " ORDER BY xid, seq",
                (tenant.tenant_id,),
            ).fetchall()
        ]
    await rec.until(lambda: len(rec.hits) >= len(ids), "the live deliveries")
    live = {h.event["id"]: h.body for h in rec.hits}
    assert set(live) == set(ids)

    reply = await asyncio.to_thread(
        api_post, tenant, REPLAY, {"from": rfc3339(window_start), "to": rfc3339(datetime.now(UTC))}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"events": len(ids)}
    await rec.until(lambda: len(rec.hits) >= 2 * len(ids), "the replayed deliveries")
    replayed = rec.hits[len(ids) :]
    assert [h.event["id"] for h in replayed] == ids  # original order, original ids
    assert all(h.body == live[h.event["id"]] for h in replayed)  # the same bodies
    # Each event now has two delivery records; the list pages through them all.
    one = ids[0]
    rows: list[dict[str, Any]] = []
    token = ""
    while True:
        reply = await asyncio.to_thread(api_get, tenant, DELIVERIES, pageSize=4, pageToken=token)
        page = reply.json()
        rows += page["deliveries"]
        token = page["nextPageToken"]
        if not token:
            break
    assert len(rows) == 2 * len(ids) and len({r["id"] for r in rows}) == len(rows)
    # A page token continues only the listing it came from: other filters are a 400.
    first = (await asyncio.to_thread(api_get, tenant, DELIVERIES, pageSize=4)).json()
    for other in ({"status": "delivered"}, {"eventId": one}):
        reply = await asyncio.to_thread(
            api_get, tenant, DELIVERIES, pageSize=4, pageToken=first["nextPageToken"], **other
        )
        assert reply.status_code == 400 and error_reason(reply) == "INVALID_ARGUMENT", reply.text
    assert [r["createdAt"] for r in rows] == sorted((r["createdAt"] for r in rows), reverse=True)
    assert [r["eventId"] for r in listed(tenant, eventId=one)] == [one, one]
    # Types narrow a replay; an empty window replays nothing.
    reply = await asyncio.to_thread(
        api_post,
        tenant,
        REPLAY,
        {"from": rfc3339(window_start), "to": rfc3339(datetime.now(UTC)), "types": ["call.ended"]},
    )
    assert reply.status_code == 200 and reply.json() == {"events": 3}
    await rec.until(lambda: len(rec.hits) == 2 * len(ids) + 3, "the call.ended replay")
    assert [h.event["type"] for h in rec.hits[2 * len(ids) :]] == ["call.ended"] * 3
    reply = await asyncio.to_thread(
        api_post,
        tenant,
        REPLAY,
        {"from": rfc3339(window_start - timedelta(hours=2)), "to": rfc3339(window_start)},
    )
    assert reply.status_code == 200 and reply.json() == {"events": 0}


def write_events(stack: Stack, tenant_id: str, count: int) -> list[str]:
    """`count` events of the tenant in its outbox from the last hour, already published
    (the relay leaves them alone): what a replay window holds after a busy hour."""
    start = datetime.now(UTC) - timedelta(hours=1)
    ids: list[str] = []
    with psycopg.connect(stack.database_url) as db, db.cursor() as cur:
        with cur.copy(
            "COPY outbox (id, tenant_id, subject, payload, created_at, published_at) FROM STDIN"
        ) as copy:
            for i in range(count):
                event = events_pb2.CallEvent(
                    id=new_id("evt"), type=types.ENDED, tenant_id=tenant_id
                )
                event.call.id = new_id("call")
                at = start + timedelta(milliseconds=i)
                event.occurred_at.FromDatetime(at)
                ids.append(event.id)
                copy.write_row(
                    (
                        event.id,
                        tenant_id,
                        types.subject(tenant_id, types.ENDED),
                        event.SerializeToString(),
                        at,
                        at,
                    )
                )
        db.commit()
    return ids


def stop_deliveries(stack: Stack, tenant_id: str) -> None:
    """Fails every pending delivery of the tenant. Rows the delivery worker holds are
    skipped and taken on a later pass: waiting for them could deadlock with its settle,
    which locks the event it records and then the replay's next one."""
    deadline = time.monotonic() + 30
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        while db.execute(
            "SELECT EXISTS (SELECT 1 FROM webhook_deliveries"
            " WHERE tenant_id = %s AND status = 'pending')",
            (tenant_id,),
        ).fetchone() == (True,):
            assert time.monotonic() < deadline, "the deliveries did not stop"
            db.execute(
                "UPDATE webhook_deliveries SET status = 'failed' WHERE id IN ("
                " SELECT id FROM webhook_deliveries WHERE tenant_id = %s AND status = 'pending'"
                " FOR UPDATE SKIP LOCKED)",
                (tenant_id,),
            )
            time.sleep(0.05)


@pytest.mark.slow
async def test_a_replay_of_10000_events_does_not_delay_another_tenants_live_deliveries(
    stack: Stack, new_tenant: Callable[..., Tenant], hook_receiver: StartReceiver
) -> None:
    replaying, live = new_tenant(), new_tenant()
    big = await hook_receiver()
    rec = await hook_receiver()
    await put_webhook(replaying, big.url)
    await put_webhook(live, rec.url, ["call.started"])
    ids = await asyncio.to_thread(write_events, stack, replaying.tenant_id, 10_000)
    reply = await asyncio.to_thread(
        api_post,
        replaying,
        REPLAY,
        {
            "from": rfc3339(datetime.now(UTC) - timedelta(hours=2)),
            "to": rfc3339(datetime.now(UTC)),
        },
    )
    assert reply.status_code == 200 and reply.json() == {"events": 10_000}
    # A second replay while this one runs is refused.
    again = await asyncio.to_thread(
        api_post,
        replaying,
        REPLAY,
        {"from": rfc3339(datetime.now(UTC) - timedelta(hours=2)), "to": rfc3339(datetime.now(UTC))},
    )
    assert again.status_code == 409 and error_reason(again) == "REPLAY_IN_PROGRESS"
    await big.until(lambda: len(big.hits) >= 100, "the replay under way")

    latencies: list[float] = []
    for i in range(5):
        sent = time.monotonic()
        await start_call(live, "alice", "bob")
        await rec.until(lambda: len(rec.hits) > i, f"live delivery {i}")  # noqa: B023
        latencies.append(time.monotonic() - sent)
    replayed_meanwhile = len(big.hits)
    assert replayed_meanwhile < 10_000, "the replay ended before the live calls: no overlap"
    assert max(latencies) < 3.0, latencies
    # The replay goes on in order, one event after another, each once; every event of the
    # window has its delivery record.
    await big.until(lambda: len(big.hits) >= 1_000, "a thousand replayed events", within=120)
    replayed = [h.event["id"] for h in big.hits]
    assert replayed == ids[: len(replayed)]
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM webhook_deliveries"
            " WHERE tenant_id = %s AND replay_id <> ''",
            (replaying.tenant_id,),
        ).fetchone()
        assert row == (10_000, 10_000)
    # The rest is not this test's business: stop it rather than let it run on beside the
    # other tests of the session.
    await asyncio.to_thread(stop_deliveries, stack, replaying.tenant_id)
    print(f"\nlive webhook latency during the replay: {[round(x, 2) for x in latencies]} s")


# --- isolation and bad input -----------------------------------------------------------


async def test_a_tenant_sees_and_retries_only_its_own_deliveries(
    new_tenant: Callable[..., Tenant], hook_receiver: StartReceiver
) -> None:
    a, b = new_tenant(), new_tenant()
    rec = await hook_receiver()
    await put_webhook(a, rec.url, ["call.started"])
    await put_webhook(b, rec.url, ["call.started"])
    await start_call(a, "alice", "bob")
    (row,) = await until_listed(
        a, lambda rs: bool(rs) and rs[0]["status"] == "delivered", "delivered"
    )
    assert listed(b) == []
    assert listed(b, eventId=row["eventId"]) == []
    reply = await asyncio.to_thread(api_post, b, f"{DELIVERIES}/{row['id']}/retry")
    assert reply.status_code == 404 and error_reason(reply) == "DELIVERY_NOT_FOUND"
    assert listed(a)[0]["attempts"] == 1  # untouched


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"eventId": "not an id"}, "eventId"),
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": 101}, "pageSize"),
        ({"pageToken": "bm90LWEtdG9rZW4="}, "pageToken"),
    ],
)
def test_bad_list_input_is_a_400_naming_the_field(
    tenant: Tenant, params: dict[str, Any], field: str
) -> None:
    reply = api_get(tenant, DELIVERIES, **params)
    assert reply.status_code == 400, reply.text
    bad = next(d for d in reply.json()["details"] if d["@type"].endswith("BadRequest"))
    assert bad["fieldViolations"][0]["field"] == field


def _window(start_ago: timedelta, length: timedelta) -> dict[str, str]:
    start = datetime.now(UTC) - start_ago
    return {"from": rfc3339(start), "to": rfc3339(start + length)}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": rfc3339(datetime.now(UTC))}, "from"),
        ({"from": rfc3339(datetime.now(UTC) - timedelta(hours=1))}, "to"),
        (_window(timedelta(hours=2), timedelta(hours=-1)), "to"),
        (_window(timedelta(hours=30), timedelta(hours=25)), "to"),
        (_window(timedelta(days=8), timedelta(hours=1)), "from"),
        (_window(timedelta(hours=-1), timedelta(hours=1)), "from"),
        ({**_window(timedelta(hours=1), timedelta(hours=1)), "types": ["call.bogus"]}, "types"),
    ],
)
def test_bad_replay_input_is_a_400_and_queues_nothing(
    tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    with tenant.api() as api:
        assert (
            api.put("/v1/tenant/webhook", json={"url": "http://127.0.0.1:9/h"}).status_code == 200
        )
    reply = api_post(tenant, REPLAY, body)
    assert reply.status_code == 400, reply.text
    bad = next(d for d in reply.json()["details"] if d["@type"].endswith("BadRequest"))
    assert bad["fieldViolations"][0]["field"] == field
    assert listed(tenant) == []


def test_replay_and_retry_need_an_endpoint_an_api_key_and_a_real_id(tenant: Tenant) -> None:
    reply = api_post(tenant, REPLAY, _window(timedelta(hours=1), timedelta(hours=1)))
    assert reply.status_code == 404 and error_reason(reply) == "WEBHOOK_NOT_SET"
    reply = api_post(tenant, f"{DELIVERIES}/nope/retry")
    assert reply.status_code == 400, reply.text
    with tenant.api() as api:
        assert (
            api.put("/v1/tenant/webhook", json={"url": "http://127.0.0.1:9/h"}).status_code == 200
        )
    reply = api_post(tenant, f"{DELIVERIES}/{new_id('whd')}/retry")
    assert reply.status_code == 404 and error_reason(reply) == "DELIVERY_NOT_FOUND"
    with tenant.user("alice") as user:
        assert user.get(DELIVERIES).status_code == 403
        assert (
            user.post(REPLAY, json=_window(timedelta(hours=1), timedelta(hours=1))).status_code
            == 403
        )
