"""Concurrent call transitions across two calls processes sharing one database: half of the
requests go through Envoy to the stack's calls service, half over gRPC straight to a second
calls process. One live call per room, always; races settle into a consistent state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc
from sendsar.calls.v1 import events_pb2

from tests.conftest import Tenant
from tests.stack import Stack

ROOMS = 20


@dataclass(frozen=True)
class Outcome:
    """One request's result, whichever way it went: HTTP-like status and body or reason."""

    status: int
    call: dict[str, Any] | None = None
    reason: str | None = None


GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


def error_info(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, err
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, status
    return str(infos[0].reason)


def call_json(message: pb.Call) -> dict[str, Any]:
    """The call as REST renders it (lowerCamelCase JSON)."""
    return dict(json_format.MessageToDict(message))


class Client:
    """Calls endpoints over REST (through Envoy) or gRPC (the second process), same results."""

    def __init__(self, http: httpx.AsyncClient, stub: pb_grpc.CallServiceStub) -> None:
        self.http = http
        self.stub = stub

    async def rest(self, token: str, path: str, body: dict[str, Any]) -> Outcome:
        reply = await self.http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        data = reply.json()
        if reply.status_code == 200:
            return Outcome(200, call=data["call"])
        infos = [d for d in data["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert len(infos) == 1, data
        return Outcome(reply.status_code, reason=infos[0]["reason"])

    async def grpc(self, token: str, method: str, request: Any) -> Outcome:
        try:
            reply = await getattr(self.stub, method)(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=30
            )
        except grpc.aio.AioRpcError as err:
            return Outcome(GRPC_TO_HTTP.get(err.code(), 500), reason=error_info(err))
        return Outcome(200, call=call_json(reply.call))

    async def start(self, token: str, room: str, *, via_grpc: bool) -> Outcome:
        if via_grpc:
            return await self.grpc(token, "StartCall", pb.StartCallRequest(room_id=room))
        return await self.rest(token, f"/chat/rooms/{room}/calls", {})

    async def accept(self, token: str, room: str, call_id: str, *, via_grpc: bool) -> Outcome:
        if via_grpc:
            request = pb.AcceptCallRequest(room_id=room, call_id=call_id)
            return await self.grpc(token, "AcceptCall", request)
        return await self.rest(token, f"/chat/rooms/{room}/calls/{call_id}/accept", {})

    async def end(self, token: str, room: str, call_id: str, *, via_grpc: bool) -> Outcome:
        if via_grpc:
            return await self.grpc(
                token, "EndCall", pb.EndCallRequest(room_id=room, call_id=call_id)
            )
        return await self.rest(token, f"/chat/rooms/{room}/calls/{call_id}/end", {})


@pytest.fixture(scope="module")
def second_calls(stack: Stack) -> Iterator[str]:
    """A second calls process on the same database, reached over gRPC directly."""
    proc = stack.start_grpc_service("calls-2", "services.calls")
    try:
        yield f"127.0.0.1:{stack.grpc_ports['calls-2']}"
    finally:
        proc.stop()


@pytest.fixture
async def client(stack: Stack, second_calls: str) -> AsyncIterator[Client]:
    async with (
        httpx.AsyncClient(base_url=stack.rest, timeout=60) as http,
        grpc.aio.insecure_channel(second_calls) as channel,
    ):
        yield Client(http, pb_grpc.CallServiceStub(channel))


def sql(stack: Stack, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.database_url) as db:
        return list(db.execute(query, args).fetchall())


def live_calls(stack: Stack, room: str) -> int:
    [(n,)] = sql(
        stack,
        "SELECT count(*) FROM calls WHERE room_id = %s AND status IN ('ringing', 'active')",
        room,
    )
    return int(n)


def all_calls(stack: Stack, room: str) -> list[str]:
    return [r[0] for r in sql(stack, "SELECT id FROM calls WHERE room_id = %s", room)]


def history_messages(stack: Stack, call_id: str) -> int:
    [(n,)] = sql(stack, "SELECT count(*) FROM messages WHERE call_id = %s", call_id)
    return int(n)


def events_of(stack: Stack, tenant: Tenant, event: str) -> list[events_pb2.CallEvent]:
    rows = sql(
        stack,
        "SELECT payload FROM outbox WHERE subject = %s ORDER BY seq",
        f"sendsar.{tenant.tenant_id}.calls.{event.removeprefix('call.')}",
    )
    return [events_pb2.CallEvent.FromString(bytes(r[0])) for r in rows]


def rest_get(tenant: Tenant, user: str, path: str) -> dict[str, Any]:
    with tenant.user(user) as c:
        reply = c.get(path, params={"pageSize": 100} if path.endswith("/messages") else None)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def history(tenant: Tenant, user: str, room: str) -> list[dict[str, Any]]:
    messages = rest_get(tenant, user, f"/chat/rooms/{room}/messages")["messages"]
    return [p["data"] for m in messages for p in m["parts"] if p["type"] == "data-call"]


def active(tenant: Tenant, user: str, room: str) -> dict[str, Any]:
    return rest_get(tenant, user, f"/chat/rooms/{room}/calls/active")


# --- one live call per room ----------------------------------------------------------------


async def test_fifty_concurrent_starts_in_one_group_room_yield_one_call(
    stack: Stack, tenant: Tenant, client: Client
) -> None:
    assert tenant.patch_settings(maxParticipants=100)["maxParticipants"] == 100
    users = [f"user{i:02d}" for i in range(50)]
    room = tenant.room(*users)
    tokens = {u: tenant.session_token(u) for u in users}

    outcomes = await asyncio.gather(
        *(client.start(tokens[u], room, via_grpc=i % 2 == 1) for i, u in enumerate(users))
    )

    assert [o.status for o in outcomes] == [200] * 50, [o for o in outcomes if o.status != 200]
    ids = {o.call["id"] for o in outcomes if o.call}
    assert len(ids) == 1, ids
    [call_id] = ids
    assert all(o.call and o.call["status"] == "active" for o in outcomes)
    assert all(o.call and o.call["mode"] == "group" for o in outcomes)
    assert live_calls(stack, room) == 1
    assert all_calls(stack, room) == [call_id]  # no other row was ever inserted

    final = active(tenant, users[0], room)["call"]
    assert final["id"] == call_id
    assert {p["userId"]: p["state"] for p in final["participants"]} == dict.fromkeys(
        users, "joined"
    )
    assert final["createdBy"] in users
    started = [e for e in events_of(stack, tenant, "call.started") if e.call.id == call_id]
    assert len(started) == 1
    joined = [
        e for e in events_of(stack, tenant, "call.participant_joined") if e.call.id == call_id
    ]
    assert sorted(e.user_id for e in joined) == sorted(u for u in users if u != final["createdBy"])


async def test_glare_both_sides_of_a_direct_call_start_at_once(
    stack: Stack, tenant: Tenant, client: Client
) -> None:
    pairs = [(f"a{i:02d}", f"b{i:02d}") for i in range(ROOMS)]
    rooms = [tenant.room(a, b) for a, b in pairs]
    tokens = {u: tenant.session_token(u) for pair in pairs for u in pair}

    jobs = []
    for i, ((a, b), room) in enumerate(zip(pairs, rooms, strict=True)):
        # each side through a different process; which one alternates between rooms
        jobs.append(client.start(tokens[a], room, via_grpc=i % 2 == 0))
        jobs.append(client.start(tokens[b], room, via_grpc=i % 2 == 1))
    outcomes = await asyncio.gather(*jobs)

    for i, ((a, b), room) in enumerate(zip(pairs, rooms, strict=True)):
        first, second = outcomes[2 * i], outcomes[2 * i + 1]
        assert (first.status, second.status) == (200, 200), (first, second)
        assert first.call and second.call
        assert first.call["id"] == second.call["id"], room
        call_id = first.call["id"]
        assert live_calls(stack, room) == 1
        assert all_calls(stack, room) == [call_id]
        # the loser's start accepted the winner's call
        assert "active" in (first.call["status"], second.call["status"])
        final = active(tenant, a, room)["call"]
        assert (final["id"], final["status"], final["mode"]) == (call_id, "active", "direct")
        assert final["answeredAt"]
        assert {p["userId"]: p["state"] for p in final["participants"]} == {
            a: "joined",
            b: "joined",
        }
        assert final["createdBy"] in (a, b)


async def test_accept_racing_end_settles_consistently(
    stack: Stack, tenant: Tenant, client: Client
) -> None:
    pairs = [(f"caller{i:02d}", f"callee{i:02d}") for i in range(ROOMS)]
    rooms = [tenant.room(a, b) for a, b in pairs]
    tokens = {u: tenant.session_token(u) for pair in pairs for u in pair}
    ringing = await asyncio.gather(
        *(
            client.start(tokens[a], room, via_grpc=False)
            for (a, _), room in zip(pairs, rooms, strict=True)
        )
    )
    call_ids = []
    for outcome in ringing:
        assert outcome.status == 200 and outcome.call and outcome.call["status"] == "ringing"
        call_ids.append(outcome.call["id"])

    jobs = []
    for i, ((a, b), room, call_id) in enumerate(zip(pairs, rooms, call_ids, strict=True)):
        jobs.append(client.accept(tokens[b], room, call_id, via_grpc=i % 2 == 0))
        jobs.append(client.end(tokens[a], room, call_id, via_grpc=i % 2 == 1))
    outcomes = await asyncio.gather(*jobs)

    for i, ((_, b), room, call_id) in enumerate(zip(pairs, rooms, call_ids, strict=True)):
        accepted, ended = outcomes[2 * i], outcomes[2 * i + 1]
        assert ended.status == 200, ended
        assert ended.call is not None
        assert ended.call["status"] == "ended"
        if accepted.status == 200:
            # accept first: the call was answered, then hung up
            assert accepted.call and accepted.call["status"] == "active"
            assert ended.call["endReason"] == "hangup", ended
            assert ended.call["answeredAt"]
            expected = ("completed", "hangup")
        else:
            # end first: the ringing call was cancelled; accept finds it ended
            assert (accepted.status, accepted.reason) == (409, "CALL_ENDED"), accepted
            assert ended.call["endReason"] == "cancelled", ended
            assert "answeredAt" not in ended.call
            expected = ("missed", "cancelled")
        assert live_calls(stack, room) == 0
        assert active(tenant, b, room) == {}
        assert history_messages(stack, call_id) == 1
        [record] = history(tenant, b, room)
        assert record["callId"] == call_id
        assert (record["outcome"], record["endReason"]) == expected
    ended_events = [e.call.id for e in events_of(stack, tenant, "call.ended")]
    assert sorted(ended_events) == sorted(call_ids)  # one call.ended per call, no more


# --- the participant cap and the last one out under concurrency ------------------------------


async def test_concurrent_joins_never_exceed_max_participants(
    stack: Stack, tenant: Tenant, client: Client
) -> None:
    cap = 5
    tenant.patch_settings(maxParticipants=cap)
    users = [f"member{i:02d}" for i in range(20)]
    room = tenant.room(*users)
    tokens = {u: tenant.session_token(u) for u in users}
    creator = await client.start(tokens[users[0]], room, via_grpc=False)
    assert creator.status == 200 and creator.call
    call_id = creator.call["id"]

    outcomes = await asyncio.gather(
        *(
            client.accept(tokens[u], room, call_id, via_grpc=i % 2 == 0)
            for i, u in enumerate(users[1:])
        )
    )

    joined = [u for u, o in zip(users[1:], outcomes, strict=True) if o.status == 200]
    full = [o for o in outcomes if o.status != 200]
    assert len(joined) == cap - 1, outcomes
    assert all((o.status, o.reason) == (409, "CALL_FULL") for o in full), full
    final = active(tenant, users[0], room)["call"]
    in_call = sorted(p["userId"] for p in final["participants"] if p["state"] == "joined")
    assert in_call == sorted([users[0], *joined])
    [(n,)] = sql(
        stack,
        "SELECT count(*) FROM call_participants WHERE call_id = %s AND state = 'joined'",
        call_id,
    )
    assert n == cap


async def test_everyone_leaving_at_once_ends_the_group_call_once(
    stack: Stack, tenant: Tenant, client: Client
) -> None:
    users = [f"peer{i}" for i in range(8)]
    room = tenant.room(*users)
    tokens = {u: tenant.session_token(u) for u in users}
    first = await client.start(tokens[users[0]], room, via_grpc=True)
    assert first.call
    call_id = first.call["id"]
    joins = await asyncio.gather(
        *(client.start(tokens[u], room, via_grpc=i % 2 == 0) for i, u in enumerate(users[1:]))
    )
    assert all(o.status == 200 for o in joins), joins

    async def leave(user: str, via_grpc: bool) -> Outcome:
        if via_grpc:
            request = pb.LeaveCallRequest(room_id=room, call_id=call_id)
            return await client.grpc(tokens[user], "LeaveCall", request)
        return await client.rest(tokens[user], f"/chat/rooms/{room}/calls/{call_id}/leave", {})

    outcomes = await asyncio.gather(*(leave(u, i % 2 == 1) for i, u in enumerate(users)))

    assert all(o.status == 200 for o in outcomes), outcomes
    ended = [o for o in outcomes if o.call and o.call["status"] == "ended"]
    assert len(ended) == 1  # the last one out, whoever that was
    assert ended[0].call and ended[0].call["endReason"] == "all_left"
    assert live_calls(stack, room) == 0
    assert history_messages(stack, call_id) == 1
    [record] = history(tenant, users[0], room)
    assert (record["outcome"], record["endReason"]) == ("completed", "all_left")
    assert sorted(record["participants"]) == sorted(users)
    assert [e.call.id for e in events_of(stack, tenant, "call.ended")] == [call_id]
