"""Races across two calls processes sharing one database: one live call per room, always."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc

from tests.conftest import Tenant
from tests.integration.calls_api import active, calls, history
from tests.stack import Stack


@pytest.fixture(scope="module")
def second_calls(stack: Stack) -> Iterator[str]:
    """Another calls replica on the same database, reached over gRPC directly."""
    proc = stack.start_grpc_service("calls-2", "services.calls")
    yield f"127.0.0.1:{stack.grpc_ports['calls-2']}"
    proc.stop()


def live_calls(stack: Stack, room: str) -> int:
    with psycopg.connect(stack.database_url) as db:
        row = db.execute(
            "SELECT count(*) FROM calls WHERE room_id = %s AND status IN ('ringing', 'active')",
            (room,),
        ).fetchone()
        assert row is not None
        return int(row[0])


async def test_fifty_concurrent_starts_yield_one_call(
    stack: Stack, tenant: Tenant, second_calls: str
) -> None:
    tenant.patch_settings(maxParticipants=100)
    users = [f"u{i:02d}" for i in range(50)]
    room = tenant.room(*users)
    tokens = {u: tenant.session_token(u) for u in users}
    async with (
        httpx.AsyncClient(base_url=stack.rest, timeout=30) as http,
        grpc.aio.insecure_channel(second_calls) as channel,
    ):
        stub = pb_grpc.CallServiceStub(channel)

        async def via_rest(user: str) -> str:
            reply = await http.post(
                calls(room), json={}, headers={"Authorization": f"Bearer {tokens[user]}"}
            )
            assert reply.status_code == 200, reply.text
            return str(reply.json()["call"]["id"])

        async def via_grpc(user: str) -> str:
            reply = await stub.StartCall(
                pb.StartCallRequest(room_id=room),
                metadata=[("authorization", f"Bearer {tokens[user]}")],
            )
            return str(reply.call.id)

        ids = await asyncio.gather(
            *(via_rest(u) if i % 2 else via_grpc(u) for i, u in enumerate(users))
        )
    assert len(set(ids)) == 1
    assert live_calls(stack, room) == 1
    call = active(tenant.user("u00"), room)["call"]
    assert sorted(p["userId"] for p in call["participants"] if p["state"] == "joined") == users


async def test_glare_both_members_start_at_once(
    stack: Stack, tenant: Tenant, second_calls: str
) -> None:
    rooms = [tenant.room("alice", "bob") for _ in range(15)]
    alice, bob = tenant.session_token("alice"), tenant.session_token("bob")
    async with (
        httpx.AsyncClient(base_url=stack.rest, timeout=30) as http,
        grpc.aio.insecure_channel(second_calls) as channel,
    ):
        stub = pb_grpc.CallServiceStub(channel)

        async def rest_start(room: str) -> Any:
            reply = await http.post(
                calls(room), json={}, headers={"Authorization": f"Bearer {alice}"}
            )
            assert reply.status_code == 200, reply.text
            return reply.json()["call"]["id"]

        async def grpc_start(room: str) -> Any:
            reply = await stub.StartCall(
                pb.StartCallRequest(room_id=room), metadata=[("authorization", f"Bearer {bob}")]
            )
            return reply.call.id

        for room in rooms:
            a, b = await asyncio.gather(rest_start(room), grpc_start(room))
            assert a == b
            call = active(tenant.user("alice"), room)["call"]
            assert call["status"] == "active"  # bob's start accepted alice's call, or vice versa
            assert live_calls(stack, room) == 1


async def test_accept_racing_end_gives_one_consistent_outcome(stack: Stack, tenant: Tenant) -> None:
    alice, bob = tenant.session_token("alice"), tenant.session_token("bob")
    outcomes = set()
    async with httpx.AsyncClient(base_url=stack.rest, timeout=30) as http:
        for _ in range(20):
            room = tenant.room("alice", "bob")
            reply = await http.post(
                calls(room), json={}, headers={"Authorization": f"Bearer {alice}"}
            )
            call_id = reply.json()["call"]["id"]
            accept, end = await asyncio.gather(
                http.post(
                    calls(room, call_id, "accept"), headers={"Authorization": f"Bearer {bob}"}
                ),
                http.post(
                    calls(room, call_id, "end"), headers={"Authorization": f"Bearer {alice}"}
                ),
            )
            assert end.status_code == 200, end.text
            final = end.json()["call"]
            assert final["status"] == "ended"
            if accept.status_code == 200:  # accepted first, then hung up
                assert final["endReason"] == "hangup" and final["answeredAt"]
                outcomes.add("answered")
            else:  # cancelled before the answer
                assert (
                    accept.status_code == 409
                    and accept.json()["details"][0]["reason"] == "CALL_ENDED"
                )
                assert final["endReason"] == "cancelled" and "answeredAt" not in final
                outcomes.add("cancelled")
            assert live_calls(stack, room) == 0
            assert len(history(tenant.user("bob"), room)) == 1
    assert outcomes  # at least one ordering observed; both are consistent
