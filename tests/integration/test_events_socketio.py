"""Call events over Socket.IO, end to end: REST through Envoy → calls service → outbox →
NATS JetStream → socket bridge → python-socketio clients connected through Envoy.

Absence is never asserted after a sleep: each such test waits for a later event on the
same socket first. The bridge emits in stream order and a socket delivers in order, so
once the later event is there, a wrongly routed earlier one would be there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import nats
import psycopg
import pytest
import socketio
from nats.js.errors import BadRequestError
from sendsar.calls.v1 import events_pb2

from devstack.procs import free_port, http_ok
from services.common.auth import RingTokens, mint_session
from services.common.models import new_id
from services.common.settings import DEV_SESSION_KEY
from services.events import types as events
from tests.conftest import Tenant
from tests.stack import Stack

WAIT = 15.0  # generous: the suite may share two cores with another one


def bridge_health(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.bridge_port}/healthz"


@pytest.fixture(scope="module")
def bridge(stack: Stack) -> Iterator[None]:
    """The socket bridge, unless the session's stack already runs one."""
    running = stack.procs.get("bridge")
    if running is not None and running.alive():
        yield
        return
    proc = stack.start_worker(
        "bridge",
        "services.socket_bridge",
        ready=lambda: http_ok(bridge_health(stack)),
        HTTP_PORT=str(stack.bridge_port),
    )
    yield
    proc.stop()


class Device:
    """One app-user device: a real Socket.IO client that records every call event."""

    def __init__(self, name: str, reconnection: bool = True) -> None:
        self.name = name
        self.sio = socketio.AsyncClient(reconnection=reconnection)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.syncs: list[dict[str, Any]] = []  # call.sync payloads
        self.closing: list[dict[str, Any]] = []  # socket.closing payloads
        self.timeline: list[str] = []  # every event name, in arrival order
        self.refusals: list[Any] = []
        self.changed = asyncio.Event()
        for event_type in events.ALL:  # call.started too: a wrong emit fails
            self.sio.on(event_type, self._recorder(event_type, self.events))
        self.sio.on("call.sync", self._recorder("call.sync", None, self.syncs))
        self.sio.on("socket.closing", self._recorder("socket.closing", None, self.closing))
        self.sio.on("connect_error", self.refusals.append)
        self.sio.on("disconnect", self._on_disconnect)

    def _recorder(
        self,
        event_type: str,
        typed: list[tuple[str, dict[str, Any]]] | None,
        payloads: list[dict[str, Any]] | None = None,
    ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def record(data: dict[str, Any]) -> None:
            if typed is not None:
                typed.append((event_type, data))
            if payloads is not None:
                payloads.append(data)
            self.timeline.append(event_type)
            self.changed.set()

        return record

    async def _on_disconnect(self, *reason: Any) -> None:
        self.timeline.append("disconnect")
        self.changed.set()

    def of(self, event_type: str | None = None, call_id: str | None = None) -> list[dict[str, Any]]:
        return [
            d
            for t, d in self.events
            if (event_type is None or t == event_type)
            and (call_id is None or d["call"]["id"] == call_id)
        ]

    async def until(self, done: Callable[[], bool], what: str, within: float = WAIT) -> None:
        async def watch() -> None:
            while not done():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(watch(), within)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {what} within {within}s; got {[t for t, _ in self.events]}"
            ) from None

    async def wait_for(self, event_type: str, call_id: str, within: float = WAIT) -> dict[str, Any]:
        await self.until(lambda: bool(self.of(event_type, call_id)), event_type, within)
        return self.of(event_type, call_id)[0]


Connect = Callable[..., Awaitable[Device]]


@pytest.fixture
async def connect(stack: Stack, bridge: None) -> AsyncIterator[Connect]:
    opened: list[Device] = []

    async def open_device(tenant: Tenant, user_id: str, name: str | None = None) -> Device:
        token = await asyncio.to_thread(tenant.session_token, user_id)
        device = Device(name or user_id)
        await device.sio.connect(
            stack.rest,  # through Envoy, as an app connects
            auth={"token": token},
            transports=["websocket"],
            socketio_path="socket.io",
            wait_timeout=WAIT,
        )
        opened.append(device)
        return device

    yield open_device
    for device in opened:
        await device.sio.disconnect()


async def rest(user: httpx.Client, path: str, **body: Any) -> dict[str, Any]:
    """A POST as an app user, off the event loop (the sockets keep receiving meanwhile)."""
    reply = await asyncio.to_thread(user.post, path, json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def start_call(user: httpx.Client, room: str) -> dict[str, Any]:
    return dict((await rest(user, f"/chat/rooms/{room}/calls"))["call"])


# --- fan-out to devices ---------------------------------------------------------


async def test_invite_reaches_both_callee_devices_and_not_the_caller(
    tenant: Tenant, connect: Connect
) -> None:
    room = tenant.room("alice", "bob")
    phone, laptop = (
        await connect(tenant, "bob", "bob-phone"),
        await connect(tenant, "bob", "bob-laptop"),
    )
    caller = await connect(tenant, "alice", "alice-phone")
    alice = tenant.user("alice")

    call = await start_call(alice, room)
    for device in (phone, laptop):
        invite = await device.wait_for("call.invite", call["id"])
        assert invite["type"] == "call.invite" and invite["id"].startswith("evt_")
        assert invite["tenantId"] == tenant.tenant_id and invite["userId"] == "alice"
        assert invite["recipientUserIds"] == ["bob"]
        assert invite["call"]["status"] == "ringing" and invite["call"]["createdBy"] == "alice"
        assert invite["occurredAt"].endswith("Z")
    assert phone.of("call.invite")[0]["id"] == laptop.of("call.invite")[0]["id"]

    # The caller cancels; once the caller has call.ended, an invite would have come first.
    await rest(alice, f"/chat/rooms/{room}/calls/{call['id']}/end")
    await caller.wait_for("call.ended", call["id"])
    assert caller.of("call.invite") == [] and caller.of("call.started") == []


async def test_accept_on_one_device_reaches_the_other_device_and_the_caller(
    tenant: Tenant, connect: Connect
) -> None:
    room = tenant.room("alice", "bob")
    phone, laptop = (
        await connect(tenant, "bob", "bob-phone"),
        await connect(tenant, "bob", "bob-laptop"),
    )
    caller = await connect(tenant, "alice")
    call = await start_call(tenant.user("alice"), room)
    await laptop.wait_for("call.invite", call["id"])

    await rest(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/accept")  # "phone"
    accepted = await laptop.wait_for("call.accepted", call["id"])  # stops the laptop ringing
    assert accepted["userId"] == "bob" and accepted["call"]["status"] == "active"
    assert sorted(accepted["recipientUserIds"]) == ["alice", "bob"]
    await phone.wait_for("call.accepted", call["id"])
    await caller.wait_for("call.accepted", call["id"])


async def test_decline_in_a_direct_call_reaches_the_caller(
    tenant: Tenant, connect: Connect
) -> None:
    room = tenant.room("alice", "bob")
    caller = await connect(tenant, "alice")
    other_device = await connect(tenant, "bob", "bob-laptop")
    call = await start_call(tenant.user("alice"), room)
    await other_device.wait_for("call.invite", call["id"])

    await rest(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/decline")
    for device in (caller, other_device):
        declined = await device.wait_for("call.declined", call["id"])
        assert declined["userId"] == "bob" and declined["call"]["status"] == "ended"
        ended = await device.wait_for("call.ended", call["id"])
        assert ended["call"]["endReason"] == "declined"


async def test_group_joins_and_leaves_reach_the_participants(
    tenant: Tenant, connect: Connect
) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice_device = await connect(tenant, "alice")
    carol_device = await connect(tenant, "carol")
    call = await start_call(tenant.user("alice"), room)
    await carol_device.wait_for("call.invite", call["id"])
    await rest(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/accept")
    joined = await alice_device.wait_for("call.participant_joined", call["id"])
    assert joined["userId"] == "bob"
    await rest(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/leave")
    left = await alice_device.wait_for("call.participant_left", call["id"])
    assert left["userId"] == "bob" and left["call"]["status"] == "active"


async def test_call_started_is_not_emitted(tenant: Tenant, connect: Connect) -> None:
    room = tenant.room("alice", "bob")
    bob_device = await connect(tenant, "bob")
    alice_device = await connect(tenant, "alice")
    alice = tenant.user("alice")
    call = await start_call(alice, room)  # writes call.started (no recipients), then invite
    await bob_device.wait_for("call.invite", call["id"])
    await rest(alice, f"/chat/rooms/{room}/calls/{call['id']}/end")
    for device in (alice_device, bob_device):
        await device.wait_for("call.ended", call["id"])
        assert device.of("call.started") == []


# --- isolation and authentication -------------------------------------------------


async def test_same_user_id_in_another_tenant_never_receives_the_events(
    new_tenant: Callable[..., Tenant], connect: Connect
) -> None:
    a, b = new_tenant(), new_tenant()
    a_room, b_room = a.room("alice", "bob"), b.room("alice", "bob")
    a_bob = await connect(a, "bob", "a-bob")
    b_bob = await connect(b, "bob", "b-bob")

    a_call = await start_call(a.user("alice"), a_room)
    await a_bob.wait_for("call.invite", a_call["id"])
    await rest(a.user("alice"), f"/chat/rooms/{a_room}/calls/{a_call['id']}/end")
    await a_bob.wait_for("call.ended", a_call["id"])
    # B's own call comes later in the stream: once its invite is at b_bob, any of A's
    # events routed to b_bob would be there too.
    b_call = await start_call(b.user("alice"), b_room)
    await b_bob.wait_for("call.invite", b_call["id"])
    assert {d["tenantId"] for _, d in b_bob.events} == {b.tenant_id}
    assert b_bob.of(call_id=a_call["id"]) == []
    assert {d["tenantId"] for _, d in a_bob.events} == {a.tenant_id}


def _token(kind: str, tenant: Tenant) -> str | None:
    claims: dict[str, Any] = {"tenant_id": tenant.tenant_id, "user_id": "bob", "name": None}
    if kind == "forged":  # right claims, signed with another key
        return mint_session(signing_key="f" * 48, ttl_seconds=600, **claims)[0]
    if kind == "expired":
        return mint_session(signing_key=DEV_SESSION_KEY, ttl_seconds=-60, **claims)[0]
    if kind == "api_key":  # a tenant credential is not an app user's session
        return tenant.api_key
    if kind == "garbage":
        return "not-a-jwt"
    if kind == "ring":  # answers one call through REST; never a session
        ring = RingTokens(DEV_SESSION_KEY)
        return ring.mint(
            tenant_id=tenant.tenant_id, call_id="call_1", user_id="bob", expires_at=2**40
        )
    return None  # missing


@pytest.mark.parametrize("kind", ["forged", "expired", "missing", "garbage", "api_key", "ring"])
async def test_bad_tokens_are_refused_with_a_reason(
    stack: Stack, bridge: None, tenant: Tenant, kind: str
) -> None:
    token = _token(kind, tenant)
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            stack.rest,
            auth={"token": token} if token is not None else {},
            transports=["websocket"],
            socketio_path="socket.io",
            wait_timeout=WAIT,
        )
    assert not client.connected
    assert len(refusals) == 1, refusals
    data = refusals[0]["data"]
    assert data["reason"] == "UNAUTHENTICATED" and data["message"], refusals
    if kind == "expired":
        assert "expired" in data["message"]
    assert DEV_SESSION_KEY not in str(refusals)


async def test_a_valid_session_token_connects(tenant: Tenant, connect: Connect) -> None:
    """Control for the refusals above: the same claims, correctly signed, connect."""
    device = await connect(tenant, "bob")
    assert device.sio.connected


# --- health, metrics ---------------------------------------------------------------


async def test_health_and_metrics(
    stack: Stack, bridge: None, tenant: Tenant, connect: Connect
) -> None:
    assert await asyncio.to_thread(http_ok, bridge_health(stack))
    room = tenant.room("alice", "bob")
    bob_device = await connect(tenant, "bob")
    call = await start_call(tenant.user("alice"), room)
    await bob_device.wait_for("call.invite", call["id"])

    def metrics() -> str:
        url = f"http://127.0.0.1:{stack.bridge_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    text = await asyncio.to_thread(metrics)
    assert 'socket_bridge_events_emitted_total{type="call.invite"}' in text
    assert "socket_bridge_connections " in text


# --- no loss, no duplicates across a NATS restart ------------------------------------


def _outbox_events_for(stack: Stack, tenant_id: str, user_id: str) -> set[str]:
    """Every event the tenant's outbox holds for this user: what the user must receive."""
    with psycopg.connect(stack.database_url, autocommit=True) as db:
        rows = db.execute(
            "SELECT payload FROM outbox WHERE tenant_id = %s", (tenant_id,)
        ).fetchall()
    wanted = set()
    for (payload,) in rows:
        event = events_pb2.CallEvent.FromString(bytes(payload))
        if user_id in event.recipient_user_ids:
            wanted.add(event.id)
    return wanted


def _lifecycles(tenant: Tenant, rooms: list[str]) -> list[str]:
    """Start, accept and end a call in each room (blocking; run off the loop)."""
    alice, bob = tenant.user("alice"), tenant.user("bob")
    ids = []
    for room in rooms:
        reply = alice.post(f"/chat/rooms/{room}/calls", json={})
        assert reply.status_code == 200, reply.text
        call_id = reply.json()["call"]["id"]
        for user, action in ((bob, "accept"), (alice, "end")):
            reply = user.post(f"/chat/rooms/{room}/calls/{call_id}/{action}", json={})
            assert reply.status_code == 200, reply.text
        ids.append(call_id)
    return ids


@pytest.mark.slow
async def test_nats_restart_loses_nothing_and_duplicates_nothing(
    stack: Stack, tenant: Tenant, connect: Connect
) -> None:
    rooms = [tenant.room("alice", "bob") for _ in range(4)]
    bob_device = await connect(tenant, "bob")
    before = await asyncio.to_thread(_lifecycles, tenant, rooms[:1])
    await bob_device.wait_for("call.ended", before[0])

    stack.stop_nats()
    try:
        # Calls keep changing while NATS is down: the events wait in the outbox.
        during = await asyncio.to_thread(_lifecycles, tenant, rooms[1:3])
    finally:
        stack.start_nats()
    after = await asyncio.to_thread(_lifecycles, tenant, rooms[3:])

    wanted = await asyncio.to_thread(_outbox_events_for, stack, tenant.tenant_id, "bob")
    # invite, accepted, ring_stopped, ended each
    assert len(wanted) == 4 * len(before + during + after)

    def received() -> set[str]:
        return {d["id"] for _, d in bob_device.events}

    await bob_device.until(lambda: wanted <= received(), "every event after the restart", 45)
    # One more event after all of them; a replay of any earlier one would precede it.
    marker = await start_call(tenant.user("alice"), rooms[0])
    await bob_device.wait_for("call.invite", marker["id"])
    ids = [d["id"] for _, d in bob_device.events]
    assert len(ids) == len(set(ids)), "an event reached the socket twice"
    for call_id in before + during + after:
        assert [t for t, d in bob_device.events if d["call"]["id"] == call_id] == [
            "call.invite",
            "call.accepted",
            "call.ring_stopped",
            "call.ended",
        ]
    assert bob_device.sio.connected
    assert await asyncio.to_thread(http_ok, bridge_health(stack))


@pytest.mark.slow
async def test_new_bridge_does_not_replay_history(
    stack: Stack, tenant: Tenant, connect: Connect
) -> None:
    """A bridge (re)started follows new events only, also across a NATS restart before
    its first event (nats-py's ordered consumer would otherwise restart at sequence 1)."""
    room = tenant.room("alice", "bob")
    old = await asyncio.to_thread(_lifecycles, tenant, [room])  # history in the stream
    bridge_proc = stack.procs["bridge"]
    bridge_proc.stop()
    bridge_proc.start()
    await asyncio.to_thread(_wait_healthy, stack)
    stack.stop_nats()
    stack.start_nats()
    bob_device = await connect(tenant, "bob")
    await asyncio.to_thread(_wait_healthy, stack)
    new = await start_call(tenant.user("alice"), room)
    await bob_device.wait_for("call.invite", new["id"])
    assert bob_device.of(call_id=old[0]) == []
    assert [t for t, _ in bob_device.events] == ["call.invite"]


@pytest.mark.slow
async def test_nats_losing_its_store_is_survived(
    stack: Stack, tenant: Tenant, connect: Connect
) -> None:
    """NATS restarted empty (e.g. without a persistent volume): the stream is recreated
    with sequences from 1 again, and the bridge follows the new stream."""
    room = tenant.room("alice", "bob")
    bob_device = await connect(tenant, "bob")
    before = await asyncio.to_thread(_lifecycles, tenant, [room])
    await bob_device.wait_for("call.ended", before[0])

    stack.stop_nats()
    shutil.rmtree(stack.workdir / "nats")
    stack.start_nats()
    after = await asyncio.to_thread(_lifecycles, tenant, [room])
    for event_type in ("call.invite", "call.accepted", "call.ring_stopped", "call.ended"):
        await bob_device.wait_for(event_type, after[0], within=45)
    ids = [d["id"] for _, d in bob_device.events]
    assert len(ids) == len(set(ids)) == 8


# --- the bridge's push consumer, with events published straight to the stream ----------


async def _publish(stack: Stack, tenant: Tenant, call_ids: list[str]) -> int:
    """One call.invite to bob per call id, in this order, written at once (a burst); the
    stream sequence of the last one, which is stored, and so are the others."""
    subject = events.subject(tenant.tenant_id, events.INVITE)
    messages = []
    for call_id in call_ids:
        event = events_pb2.CallEvent(
            id=new_id("evt"), type=events.INVITE, tenant_id=tenant.tenant_id
        )
        event.recipient_user_ids.append("bob")
        event.call.id = call_id
        messages.append((event.SerializeToString(), {"Nats-Msg-Id": event.id}))
    nc = await nats.connect(stack.nats_url)
    try:
        for payload, headers in messages[:-1]:
            await nc.publish(subject, payload, headers=headers)
        # Acknowledged once stored, after the earlier ones of the same connection.
        payload, headers = messages[-1]
        ack = await nc.jetstream().publish(subject, payload, headers=headers)
        return ack.seq
    finally:
        await nc.close()


def _invited(device: Device, prefix: str) -> list[str]:
    return [d["call"]["id"] for d in device.of("call.invite") if d["call"]["id"].startswith(prefix)]


async def test_a_burst_reaches_the_socket_complete_and_in_order(
    stack: Stack, tenant: Tenant, connect: Connect
) -> None:
    """Events stored faster than the bridge emits them are handed over in batches (the
    first event and every one pending behind it): none skipped, none twice, in order."""
    bob_device = await connect(tenant, "bob")
    await bob_device.until(lambda: bool(bob_device.syncs), "call.sync")
    sent = [f"call_burst{i:05d}" for i in range(2000)]
    await _publish(stack, tenant, sent)
    await bob_device.until(
        lambda: len(_invited(bob_device, "call_burst")) >= len(sent), "the burst", 45
    )
    assert _invited(bob_device, "call_burst") == sent


@pytest.mark.slow
async def test_events_in_flight_at_a_nats_restart_arrive_once_and_in_order(
    stack: Stack, tenant: Tenant, connect: Connect
) -> None:
    """NATS stops right after a burst is stored, with part of it not yet at the socket:
    the bridge resumes after the last event it handled, so the stream's events reach the
    socket once each and in order, followed by those published after the restart."""
    bob_device = await connect(tenant, "bob")
    await bob_device.until(lambda: bool(bob_device.syncs), "call.sync")
    before = [f"call_before{i:05d}" for i in range(1000)]
    after = [f"call_after{i:05d}" for i in range(100)]
    await _publish(stack, tenant, before)
    stack.stop_nats()
    stack.start_nats()
    await _publish(stack, tenant, after)
    await bob_device.until(
        lambda: len(_invited(bob_device, "call_after")) >= len(after), "the events", 45
    )
    assert _invited(bob_device, "call_") == before + after
    assert bob_device.sio.connected


@pytest.mark.slow
async def test_a_stream_recreated_under_a_connected_bridge_is_followed_from_its_start(
    stack: Stack, tenant: Tenant, connect: Connect
) -> None:
    """The stream deleted and created again while NATS keeps running (no reconnect): its
    sequences start at 1 again, below where the bridge was, and the bridge notices the new
    stream and follows it from its start (nats-py's ordered consumer alone would wait
    for the old sequence)."""
    bob_device = await connect(tenant, "bob")
    await bob_device.until(lambda: bool(bob_device.syncs), "call.sync")
    old = [f"call_old{i}" for i in range(20)]
    await _publish(stack, tenant, old)
    await bob_device.until(lambda: len(_invited(bob_device, "call_old")) == len(old), "old")

    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        config = (await js.stream_info(events.STREAM)).config
        await js.delete_stream(events.STREAM)
        # Anyone may have created it first (the bridge itself, a relay): a new stream all the same.
        with contextlib.suppress(BadRequestError):
            await js.add_stream(config)
    finally:
        await nc.close()
    new = [f"call_new{i}" for i in range(3)]
    assert await _publish(stack, tenant, new) < 20  # below the bridge's old position
    await bob_device.until(lambda: len(_invited(bob_device, "call_new")) == len(new), "new", 45)
    assert _invited(bob_device, "call_") == old + new


def _wait_healthy(stack: Stack, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if http_ok(bridge_health(stack)):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the bridge did not become healthy")


# --- sockets follow their tokens: call.sync, expiry, caps ------------------------------


async def open_socket(url: str, token: str, name: str = "device") -> Device:
    """A socket without automatic reconnection; refusals are in `.refusals`."""
    device = Device(name, reconnection=False)
    with contextlib.suppress(socketio.exceptions.ConnectionError):
        await device.sio.connect(
            url,
            auth={"token": token},
            transports=["websocket"],
            socketio_path="socket.io",
            wait_timeout=WAIT,
        )
    return device


async def test_call_sync_comes_first_on_every_connect_with_the_users_live_calls(
    tenant: Tenant, connect: Connect
) -> None:
    direct_room = tenant.room("alice", "bob")
    group_room = tenant.room("alice", "bob", "carol")
    others_room = tenant.room("alice", "carol")  # bob is no member
    bob = await connect(tenant, "bob")
    await bob.until(lambda: bool(bob.syncs), "call.sync")
    assert bob.timeline[0] == "call.sync" and bob.syncs == [{"calls": []}]

    alice = tenant.user("alice")
    direct = await start_call(alice, direct_room)
    group = await start_call(alice, group_room)
    await start_call(alice, others_room)
    await bob.wait_for("call.invite", group["id"])
    await bob.sio.disconnect()

    again = await connect(tenant, "bob", "bob-again")  # events missed meanwhile: none lost
    await again.until(lambda: bool(again.syncs), "call.sync")
    assert again.timeline[0] == "call.sync"
    synced = {c["id"]: c for c in again.syncs[0]["calls"]}
    assert set(synced) == {direct["id"], group["id"]}
    # Rendered exactly as REST renders the call.
    reply = await asyncio.to_thread(
        tenant.user("bob").get, f"/chat/rooms/{direct_room}/calls/active"
    )
    assert reply.status_code == 200 and synced[direct["id"]] == reply.json()["call"]
    assert synced[direct["id"]]["status"] == "ringing"

    # No longer a member of the group's room: that call is no longer his to see.
    def remove_bob() -> None:
        with tenant.api() as api:
            reply = api.delete(f"/chat/rooms/{group_room}/members/bob")
            assert reply.status_code == 200, reply.text

    await asyncio.to_thread(remove_bob)
    third = await connect(tenant, "bob", "bob-third")
    await third.until(lambda: bool(third.syncs), "call.sync")
    assert [c["id"] for c in third.syncs[0]["calls"]] == [direct["id"]]


async def test_a_socket_is_closed_when_its_session_token_expires(
    stack: Stack, bridge: None, tenant: Tenant
) -> None:
    token, _ = mint_session(
        signing_key=DEV_SESSION_KEY,
        tenant_id=tenant.tenant_id,
        user_id="bob",
        name=None,
        ttl_seconds=3,
    )
    device = await open_socket(stack.rest, token, "bob")
    connected_at = time.monotonic()
    assert device.sio.connected
    await device.until(lambda: "disconnect" in device.timeline, "the close", within=3 + WAIT)
    assert time.monotonic() - connected_at > 1.5  # at expiry, not at once
    assert device.timeline == ["call.sync", "socket.closing", "disconnect"]
    assert device.closing[0]["reason"] == "TOKEN_EXPIRED" and device.closing[0]["message"]
    assert not device.sio.connected


async def test_sockets_per_user_and_per_tenant_are_capped_with_a_clear_refusal(
    stack: Stack, new_tenant: Callable[..., Tenant]
) -> None:
    port = free_port()
    proc = stack.start_worker(
        "bridge-capped",
        "services.socket_bridge",
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
        HTTP_PORT=str(port),
        SOCKETS_MAX_PER_USER="2",
        SOCKETS_MAX_PER_TENANT="3",
    )
    url = f"http://127.0.0.1:{port}"
    tenant, other = new_tenant(), new_tenant()
    opened: list[Device] = []

    async def socket_of(t: Tenant, user_id: str) -> Device:
        device = await open_socket(url, await asyncio.to_thread(t.session_token, user_id))
        opened.append(device)
        return device

    try:
        first, second = await socket_of(tenant, "bob"), await socket_of(tenant, "bob")
        assert first.sio.connected and second.sio.connected
        third = await socket_of(tenant, "bob")
        assert not third.sio.connected
        assert third.refusals[0]["data"]["reason"] == "TOO_MANY_SOCKETS", third.refusals
        carol = await socket_of(tenant, "carol")  # the tenant's third socket
        assert carol.sio.connected
        dave = await socket_of(tenant, "dave")
        assert dave.refusals[0]["data"]["reason"] == "TOO_MANY_SOCKETS", dave.refusals
        assert (await socket_of(other, "bob")).sio.connected  # other tenants are not affected
        await first.sio.disconnect()
        await asyncio.sleep(0.5)  # the bridge sees the disconnect
        assert (await socket_of(tenant, "bob")).sio.connected  # a freed place is free again
    finally:
        for device in opened:
            if device.sio.connected:
                await device.sio.disconnect()
        proc.stop()


async def test_an_event_on_another_tenants_subject_is_dropped_and_counted(
    stack: Stack, new_tenant: Callable[..., Tenant], connect: Connect
) -> None:
    """NATS is not trusted blindly: an event naming tenant A published on tenant B's
    subject never reaches A's users."""
    a, b = new_tenant(), new_tenant()
    a_room = a.room("alice", "bob")
    a_bob = await connect(a, "bob")
    forged = events_pb2.CallEvent(
        id=new_id("evt"), type=events.INVITE, tenant_id=a.tenant_id, recipient_user_ids=["bob"]
    )
    forged.call.id = new_id("call")
    nc = await nats.connect(stack.nats_url)
    try:
        await nc.jetstream().publish(
            events.subject(b.tenant_id, events.INVITE), forged.SerializeToString()
        )
    finally:
        await nc.close()
    # A later event on the same socket: the forged one, had it passed, would be there first.
    call = await start_call(a.user("alice"), a_room)
    await a_bob.wait_for("call.invite", call["id"])
    assert a_bob.of("call.invite", forged.call.id) == []

    def metrics() -> str:
        url = f"http://127.0.0.1:{stack.bridge_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    dropped = 'events_dropped_total{consumer="socket-bridge",reason="tenant_mismatch"}'
    assert dropped in await asyncio.to_thread(metrics)
