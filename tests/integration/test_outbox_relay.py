"""The outbox relay: events committed while NATS is down survive a crash of the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

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
