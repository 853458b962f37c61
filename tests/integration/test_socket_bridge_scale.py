"""What the bridge's round for 10,000 sockets per process must not change (issue 30):

- one gathered `call.sync` read (services/calls/queries.py) gives each of many users, of
  several tenants, exactly the live calls the user's own sync listed before, rendered as
  REST renders them;
- python-socketio's own transport still serves what the lean websocket path does not
  take: long-polling, and long-polling upgraded to a websocket (through Envoy);
- an event to many users of a room reaches each of their sockets once (the bridge's
  broadcast writes a packet framed once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from services.calls.queries import calls_of_users
from services.common.db import create_engine
from services.common.settings import load_settings
from tests.conftest import Tenant
from tests.integration.test_events_socketio import WAIT, Connect, Device, rest, start_call
from tests.stack import Stack


def _active(tenant: Tenant, user: str, room: str) -> dict[str, Any]:
    reply = tenant.user(user).get(f"/chat/rooms/{room}/calls/active")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["call"])


async def test_one_sync_read_gives_each_user_their_own_live_calls(
    stack: Stack, new_tenant: Callable[..., Tenant]
) -> None:
    one, two = new_tenant(), new_tenant()
    direct = one.room("alice", "bob")
    group = one.room("alice", "bob", "carol")
    gone = one.room("alice", "bob", "dave")
    elsewhere = two.room("alice", "erin")  # the same user id in another tenant
    alice1, alice2 = one.user("alice"), two.user("alice")
    direct_call = await start_call(alice1, direct)
    group_call = await start_call(alice1, group)
    gone_call = await start_call(alice1, gone)
    other_call = await start_call(alice2, elsewhere)
    await rest(two.user("erin"), f"/chat/rooms/{elsewhere}/calls/{other_call['id']}/accept")
    with one.api() as api:  # bob no longer a member: that call is not his to see
        assert api.delete(f"/chat/rooms/{gone}/members/bob").status_code == 200

    engine = create_engine(load_settings(DATABASE_URL=stack.database_url, ENV="test"), 2)
    try:
        found = await calls_of_users(
            engine,
            [
                (one.tenant_id, "alice"),
                (two.tenant_id, "alice"),
                (one.tenant_id, "bob"),
                (one.tenant_id, "nobody"),
            ],
        )
    finally:
        await engine.dispose()

    def ids(tenant: Tenant, user: str) -> list[str]:
        return [c["id"] for c in found.get((tenant.tenant_id, user), [])]

    assert ids(one, "alice") == [direct_call["id"], group_call["id"], gone_call["id"]]
    assert ids(two, "alice") == [other_call["id"]]
    assert ids(one, "bob") == [direct_call["id"], group_call["id"]]  # oldest first
    assert (one.tenant_id, "nobody") not in found
    # Each call as REST renders it (the same one when two users share it).
    by_id = {c["id"]: c for calls in found.values() for c in calls}
    assert by_id[direct_call["id"]] == await asyncio.to_thread(_active, one, "bob", direct)
    assert by_id[other_call["id"]] == await asyncio.to_thread(_active, two, "alice", elsewhere)
    assert by_id[other_call["id"]]["status"] == "active"


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]])
async def test_long_polling_and_its_upgrade_are_still_served(
    stack: Stack, bridge: None, tenant: Tenant, transports: list[str]
) -> None:
    room = tenant.room("alice", "bob")
    token = await asyncio.to_thread(tenant.session_token, "bob")
    device = Device("bob")
    await device.sio.connect(
        stack.rest,
        auth={"token": token},
        transports=transports,
        socketio_path="socket.io",
        wait_timeout=WAIT,
    )
    try:
        await device.until(lambda: bool(device.syncs), "call.sync")
        call = await start_call(tenant.user("alice"), room)
        await device.wait_for("call.invite", call["id"])
        if transports == ["polling", "websocket"]:
            await device.until(lambda: device.sio.transport() == "websocket", "the upgrade")
            await rest(tenant.user("alice"), f"/chat/rooms/{room}/calls/{call['id']}/end")
            await device.wait_for("call.ended", call["id"])
        assert device.timeline[0] == "call.sync"
    finally:
        if "websocket" in transports:
            await device.sio.disconnect()
        else:
            # python-engineio's server answers a client's CLOSE without waking the pending
            # long-poll GET, which the client's disconnect would wait out (30 s).
            await device.sio.eio.disconnect(abort=True)


def _synced(device: Device) -> Callable[[], bool]:
    return lambda: bool(device.syncs)


async def test_an_event_reaches_every_socket_of_every_recipient_once(
    tenant: Tenant, connect: Connect
) -> None:
    members = [f"user{i}" for i in range(12)]
    room = tenant.room(*members)
    devices = [await connect(tenant, m, f"{m}-{d}") for m in members[1:] for d in range(2)]
    for device in devices:
        await device.until(_synced(device), "call.sync")
    call = await start_call(tenant.user(members[0]), room)
    for device in devices:
        await device.wait_for("call.invite", call["id"])
    ended = await rest(tenant.user(members[0]), f"/chat/rooms/{room}/calls/{call['id']}/end")
    for device in devices:
        await device.wait_for("call.ended", ended["call"]["id"])
        assert len(device.of("call.invite", call["id"])) == 1  # once, on each device
