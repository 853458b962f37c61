"""Call events over Socket.IO through Envoy: fan-out to devices, isolation, auth, no loss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import socketio

from services.common.auth import mint_session
from services.common.settings import DEV_SESSION_KEY
from tests.conftest import Tenant
from tests.integration.realtime import Device, settle
from tests.stack import Stack


@pytest.fixture
async def devices(stack: Stack) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Device] = []

    async def open_device(tenant: Tenant, user_id: str, name: str | None = None) -> Device:
        device = await Device(name or user_id).connect(stack.rest, tenant.session_token(user_id))
        opened.append(device)
        return device

    yield open_device
    for device in opened:
        await device.close()


def post(client: Any, path: str, **body: Any) -> dict[str, Any]:
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def test_invite_reaches_every_callee_device_and_not_the_caller(
    tenant: Tenant, devices: Callable[..., Any]
) -> None:
    room = tenant.room("alice", "bob")
    phone, laptop = await devices(tenant, "bob", "phone"), await devices(tenant, "bob", "laptop")
    caller = await devices(tenant, "alice")
    call = post(tenant.user("alice"), f"/chat/rooms/{room}/calls")["call"]
    for device in (phone, laptop):
        invite = await device.wait_for("call.invite", call["id"])
        assert invite["call"]["status"] == "ringing"
        assert invite["recipientUserIds"] == ["bob"]
        assert invite["type"] == "call.invite" and invite["id"].startswith("evt_")
    await settle()
    assert caller.of("call.invite") == []


async def test_accept_on_one_device_reaches_the_other(
    tenant: Tenant, devices: Callable[..., Any]
) -> None:
    room = tenant.room("alice", "bob")
    phone, laptop = await devices(tenant, "bob", "phone"), await devices(tenant, "bob", "laptop")
    caller = await devices(tenant, "alice")
    bob = tenant.user("bob")
    call = post(tenant.user("alice"), f"/chat/rooms/{room}/calls")["call"]
    await laptop.wait_for("call.invite", call["id"])
    post(bob, f"/chat/rooms/{room}/calls/{call['id']}/accept")  # answered on the phone
    accepted = await laptop.wait_for("call.accepted", call["id"])
    assert accepted["call"]["status"] == "active" and accepted["userId"] == "bob"
    await phone.wait_for("call.accepted", call["id"])
    await caller.wait_for("call.accepted", call["id"])


async def test_decline_reaches_the_caller_and_the_other_device(
    tenant: Tenant, devices: Callable[..., Any]
) -> None:
    room = tenant.room("alice", "bob")
    laptop = await devices(tenant, "bob", "laptop")
    caller = await devices(tenant, "alice")
    call = post(tenant.user("alice"), f"/chat/rooms/{room}/calls")["call"]
    post(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/decline")
    for device in (caller, laptop):
        declined = await device.wait_for("call.declined", call["id"])
        assert declined["call"]["status"] == "ended"
        assert (await device.wait_for("call.ended", call["id"]))["call"]["endReason"] == "declined"


async def test_group_events_follow_joins_and_leaves(
    tenant: Tenant, devices: Callable[..., Any]
) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice_dev = await devices(tenant, "alice")
    call = post(tenant.user("alice"), f"/chat/rooms/{room}/calls")["call"]
    post(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/accept")
    joined = await alice_dev.wait_for("call.participant_joined", call["id"])
    assert joined["userId"] == "bob"
    post(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/leave")
    left = await alice_dev.wait_for("call.participant_left", call["id"])
    assert left["userId"] == "bob" and left["call"]["status"] == "active"


async def test_another_tenants_user_with_the_same_id_receives_nothing(
    new_tenant: Callable[..., Tenant], devices: Callable[..., Any]
) -> None:
    a, b = new_tenant(), new_tenant()
    room = a.room("alice", "bob")
    a_bob = await devices(a, "bob", "a-bob")
    b_bob = await devices(b, "bob", "b-bob")
    call = post(a.user("alice"), f"/chat/rooms/{room}/calls")["call"]
    await a_bob.wait_for("call.invite", call["id"])
    post(a.user("alice"), f"/chat/rooms/{room}/calls/{call['id']}/end")
    await a_bob.wait_for("call.ended", call["id"])
    await settle()
    assert b_bob.events == []


@pytest.mark.parametrize("kind", ["forged", "expired", "missing", "api_key"])
async def test_bridge_refuses_bad_tokens(stack: Stack, tenant: Tenant, kind: str) -> None:
    token: Any = {
        "forged": mint_session(
            signing_key="f" * 48,
            tenant_id=tenant.tenant_id,
            user_id="bob",
            name=None,
            ttl_seconds=600,
        )[0],
        "expired": mint_session(
            signing_key=DEV_SESSION_KEY,
            tenant_id=tenant.tenant_id,
            user_id="bob",
            name=None,
            ttl_seconds=-10,
        )[0],
        "missing": None,
        "api_key": tenant.api_key,
    }[kind]
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            stack.rest,
            auth={"token": token} if token else {},
            transports=["websocket"],
            socketio_path="socket.io",
            wait_timeout=10,
        )
    assert refusals and refusals[0]["data"]["reason"] == "UNAUTHENTICATED"
    assert not client.connected


def _lifecycle(tenant: Tenant, rooms: list[str]) -> list[str]:
    """Starts, accepts and ends a call in each room; returns the call ids."""
    ids = []
    alice, bob = tenant.user("alice"), tenant.user("bob")
    for room in rooms:
        call = post(alice, f"/chat/rooms/{room}/calls")["call"]
        post(bob, f"/chat/rooms/{room}/calls/{call['id']}/accept")
        post(alice, f"/chat/rooms/{room}/calls/{call['id']}/end")
        ids.append(call["id"])
    return ids


async def _expect_each_once(device: Device, call_ids: list[str]) -> None:
    for call_id in call_ids:
        for event_type in ("call.invite", "call.accepted", "call.ended"):
            await device.wait_for(event_type, call_id, within=30)
    await settle(2)
    for call_id in call_ids:
        ids = [d["id"] for t, d in device.events if d["call"]["id"] == call_id]
        assert len(ids) == len(set(ids)) == 3, device.events  # invite, accepted, ended: once each


@pytest.mark.slow
async def test_nats_down_then_up_loses_nothing_and_duplicates_nothing(
    stack: Stack, tenant: Tenant, devices: Callable[..., Any]
) -> None:
    rooms = [tenant.room("alice", "bob") for _ in range(3)]
    bob = await devices(tenant, "bob")
    before = _lifecycle(tenant, rooms[:1])
    await _expect_each_once(bob, before)

    stack.stop_nats()
    try:
        during = await asyncio.to_thread(_lifecycle, tenant, rooms[1:])  # calls keep working
        await asyncio.sleep(2)
    finally:
        stack.start_nats()
    await _expect_each_once(bob, before + during)


@pytest.mark.slow
async def test_relay_killed_with_unpublished_events_loses_nothing(
    stack: Stack, tenant: Tenant, devices: Callable[..., Any]
) -> None:
    """Events committed while NATS is down wait in the outbox through a crash of the relay."""
    rooms = [tenant.room("alice", "bob") for _ in range(2)]
    bob = await devices(tenant, "bob")
    stack.stop_nats()
    try:
        committed = await asyncio.to_thread(_lifecycle, tenant, rooms)
        stack.procs["calls"].kill()  # the relay dies with its events unpublished
    finally:
        stack.start_nats()
        stack.start_grpc_service("calls", "services.calls")
    await _expect_each_once(bob, committed)
