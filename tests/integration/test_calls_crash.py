"""Ring timeouts are durable: they fire when the process that started the call was killed,
exactly once when several calls processes share the database, and the deadline holds
even when the sweep comes late."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc
from sendsar.calls.v1 import events_pb2

from devstack.procs import Proc
from tests.conftest import Tenant, error_reason
from tests.stack import Stack

pytestmark = pytest.mark.slow

RING = 5  # the shortest ring window a tenant may set
SLACK = 1.5


# --- helpers ---------------------------------------------------------------------------------


def poll(check: Callable[[], Any], within: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within}s (last: {value!r})")
        time.sleep(every)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def active(user: httpx.Client, room: str) -> dict[str, Any]:
    return ok(user.get(f"/chat/rooms/{room}/calls/active"))


def history(user: httpx.Client, room: str) -> list[dict[str, Any]]:
    messages = ok(user.get(f"/chat/rooms/{room}/messages", params={"pageSize": 100}))["messages"]
    return [p["data"] for m in messages for p in m["parts"] if p["type"] == "data-call"]


def sql(stack: Stack, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.database_url) as db:
        return list(db.execute(query, args).fetchall())


def events_for(stack: Stack, tenant: Tenant, event: str, call_id: str) -> list[str]:
    """Ids of the outbox events of one type for one call."""
    rows = sql(
        stack,
        "SELECT payload FROM outbox WHERE subject = %s ORDER BY seq",
        f"sendsar.{tenant.tenant_id}.calls.{event}",
    )
    decoded = [events_pb2.CallEvent.FromString(bytes(r[0])) for r in rows]
    return [e.id for e in decoded if e.call.id == call_id]


def start_via_grpc(address: str, token: str, room: str) -> pb.Call:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.CallServiceStub(channel).StartCall(
            pb.StartCallRequest(room_id=room),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=10,
        )
    return reply.call


@pytest.fixture
def calls_2(stack: Stack) -> Iterator[Proc]:
    """A second calls process on the same database; each test gets a fresh one."""
    proc = stack.start_grpc_service("calls-2", "services.calls")
    try:
        yield proc
    finally:
        proc.stop()  # a no-op once killed


def address(stack: Stack, name: str) -> str:
    return f"127.0.0.1:{stack.grpc_ports[name]}"


def assert_missed_once(
    stack: Stack, tenant: Tenant, viewer: httpx.Client, room: str, call_id: str
) -> dict[str, Any]:
    records = history(viewer, room)
    assert [r["callId"] for r in records] == [call_id], records
    [record] = records
    assert (record["outcome"], record["endReason"]) == ("missed", "timeout")
    assert "answeredAt" not in record and record["durationSeconds"] == 0
    [(messages,)] = sql(stack, "SELECT count(*) FROM messages WHERE call_id = %s", call_id)
    assert messages == 1
    assert len(events_for(stack, tenant, "missed", call_id)) == 1
    assert len(events_for(stack, tenant, "ended", call_id)) == 1
    [(status, reason)] = sql(stack, "SELECT status, end_reason FROM calls WHERE id = %s", call_id)
    assert (status, reason) == ("ended", "timeout")
    return record


# --- tests -------------------------------------------------------------------------------------


def test_ring_timeout_fires_after_the_starting_process_is_killed(
    stack: Stack, tenant: Tenant, calls_2: Proc
) -> None:
    tenant.patch_settings(ringTimeoutSeconds=RING)
    room = tenant.room("alice", "bob")
    token = tenant.session_token("alice")
    bob = tenant.user("bob")

    began = time.monotonic()
    call = start_via_grpc(address(stack, "calls-2"), token, room)
    stack.procs["calls-2"].kill()  # SIGKILL: no clean-up, no goodbye
    assert not calls_2.alive()
    assert (call.status, call.mode, call.ring_timeout_seconds) == ("ringing", "direct", RING)
    assert active(bob, room)["call"]["id"] == call.id  # the live call outlived its process

    poll(lambda: active(bob, room) == {}, within=RING + SLACK + 1, what="ring timeout")
    elapsed = time.monotonic() - began
    assert RING - SLACK <= elapsed <= RING + SLACK, elapsed

    record = poll(lambda: history(bob, room), within=2, what="history")[0]
    assert record["callId"] == call.id
    window = (ts(record["endedAt"]) - ts(record["startedAt"])).total_seconds()
    assert RING <= window <= RING + SLACK, window  # never early, and swept promptly
    assert record["initiator"] == "alice" and record["participants"] == ["alice"]
    assert_missed_once(stack, tenant, bob, room, call.id)
    bob.close()


def test_two_processes_expire_each_ring_exactly_once(
    stack: Stack, tenant: Tenant, calls_2: Proc
) -> None:
    tenant.patch_settings(ringTimeoutSeconds=RING)
    pairs = [(f"caller{i}", f"callee{i}") for i in range(8)]
    rooms = [tenant.room(a, b) for a, b in pairs]
    ids = []
    for i, ((a, _), room) in enumerate(zip(pairs, rooms, strict=True)):
        token = tenant.session_token(a)
        if i % 2:
            ids.append(start_via_grpc(address(stack, "calls-2"), token, room).id)
        else:
            with tenant.user(a) as user:
                ids.append(ok(user.post(f"/chat/rooms/{room}/calls", json={}))["call"]["id"])
    assert calls_2.alive()

    def no_live_calls() -> bool:
        [(n,)] = sql(
            stack, "SELECT count(*) FROM calls WHERE id = ANY(%s) AND status <> 'ended'", ids
        )
        return n == 0

    poll(no_live_calls, within=RING + SLACK + 2, what="all rings expired")
    time.sleep(1)  # both processes sweep every 0.25 s: a second expiry would show by now
    assert calls_2.alive()
    for (_, b), room, call_id in zip(pairs, rooms, ids, strict=True):
        with tenant.user(b) as callee:
            assert active(callee, room) == {}
            assert_missed_once(stack, tenant, callee, room, call_id)


def test_an_accept_after_the_ring_window_is_too_late(stack: Stack, tenant: Tenant) -> None:
    """Sweeps run every 0.25 s and skip a row another transaction holds; a late sweep must
    not let an answer through after the deadline. The test holds the call row (as a slow
    transaction would) from just before the deadline until just after the accept arrives."""
    tenant.patch_settings(ringTimeoutSeconds=RING)
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice, tenant.user("bob") as bob:
        call = ok(alice.post(f"/chat/rooms/{room}/calls", json={}))["call"]
        with psycopg.connect(stack.database_url) as db:
            [(left,)] = db.execute(
                "SELECT extract(epoch FROM ring_deadline - now()) FROM calls WHERE id = %s",
                (call["id"],),
            ).fetchall()
            db.commit()
            time.sleep(max(0.0, float(left) - 1.0))
            db.execute("SELECT 1 FROM calls WHERE id = %s FOR UPDATE", (call["id"],))
            assert active(bob, room)["call"]["status"] == "ringing"  # still before the deadline
            time.sleep(1.5)  # the deadline passes while the row is held
            result: dict[str, httpx.Response] = {}
            accept = threading.Thread(
                target=lambda: result.update(
                    reply=bob.post(f"/chat/rooms/{room}/calls/{call['id']}/accept", json={})
                )
            )
            accept.start()
            time.sleep(0.5)  # the accept now waits for the row
            db.commit()
        accept.join(timeout=15)
        reply = result["reply"]
        assert reply.status_code == 409, reply.text
        assert error_reason(reply) == "CALL_ENDED"
        poll(lambda: active(bob, room) == {}, within=3, what="the call ended")
        assert_missed_once(stack, tenant, bob, room, call["id"])
