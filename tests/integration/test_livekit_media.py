"""Calls against a real LiveKit server: real rtc clients join the media rooms the calls mint
tokens for, and LiveKit's own webhooks (through Envoy) drive the call state."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

import httpx
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api, rtc
from livekit.protocol import models, webhook

from devstack.procs import ROOT
from services.common.settings import DEV_LIVEKIT_SECRET
from tests.conftest import Tenant, error_reason
from tests.stack import Stack

pytestmark = [pytest.mark.livekit]

T = TypeVar("T")

WAIT = 20.0  # seconds: generous, other test runs may share this 2-core machine
CRASH_WAIT = 60.0  # LiveKit's departure/ping timeouts for a client that vanished


@pytest.fixture(autouse=True)
def _needs_livekit(stack: Stack) -> None:
    if not stack.livekit_enabled:
        pytest.skip("livekit-server binary not built (make livekit): media tests need it")


# --- helpers ------------------------------------------------------------------------------


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, within: float = ..., interval: float = ...
) -> T: ...
@overload
async def eventually(
    probe: Callable[[], T | None], what: str, within: float = ..., interval: float = ...
) -> T: ...
async def eventually(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    what: str,
    within: float = WAIT,
    interval: float = 0.2,
) -> T:
    """Polls until the probe returns something truthy; fails with `what` at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:.0f} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


class Media:
    """One rtc connection whose disconnect is recorded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.room = rtc.Room()
        self.disconnected = asyncio.Event()
        self.disconnect_reason: Any = None

        @self.room.on("disconnected")
        def _on_disconnected(reason: Any) -> None:
            self.disconnect_reason = reason
            self.disconnected.set()

    async def connect(self, livekit: dict[str, Any]) -> Media:
        await asyncio.wait_for(self.room.connect(livekit["url"], livekit["token"]), WAIT)
        return self

    def connected(self) -> bool:
        return self.room.isconnected() and not self.disconnected.is_set()

    def sees(self) -> set[str]:
        return set(self.room.remote_participants)

    async def wait_disconnected(self, within: float = WAIT) -> None:
        try:
            await asyncio.wait_for(self.disconnected.wait(), within)
        except TimeoutError:
            pytest.fail(f"{self.name}'s rtc client was not disconnected within {within:.0f} s")


@pytest.fixture
async def media() -> AsyncIterator[Callable[[str], Media]]:
    """Makes rtc clients; whatever is still connected at the end is disconnected."""
    made: list[Media] = []

    def make(name: str) -> Media:
        m = Media(name)
        made.append(m)
        return m

    yield make
    for m in made:
        if m.room.isconnected():
            with contextlib.suppress(Exception):  # best-effort clean-up
                await asyncio.wait_for(m.room.disconnect(), 10)


@pytest.fixture
async def lk(stack: Stack) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(
        url=stack.env()["LIVEKIT_URL"], api_key="devkey", api_secret=DEV_LIVEKIT_SECRET
    )
    try:
        yield client
    finally:
        await client.aclose()


async def room_names(lk: api.LiveKitAPI) -> set[str]:
    return {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}


async def identities(lk: api.LiveKitAPI, livekit_room: str) -> set[str]:
    """Who is in the LiveKit room now (nobody when the room does not exist)."""
    try:
        reply = await lk.room.list_participants(api.ListParticipantsRequest(room=livekit_room))
    except api.TwirpError as err:
        if err.code == "not_found":
            return set()
        raise
    return {p.identity for p in reply.participants}


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, (reply.status_code, reply.text)
    body = reply.json()
    assert isinstance(body, dict)
    return body


def start(user: httpx.Client, room: str, **body: Any) -> dict[str, Any]:
    return ok(user.post(f"/chat/rooms/{room}/calls", json=body))


def act(user: httpx.Client, room: str, call_id: str, verb: str, **body: Any) -> dict[str, Any]:
    return ok(user.post(f"/chat/rooms/{room}/calls/{call_id}/{verb}", json=body))


def active(user: httpx.Client, room: str) -> dict[str, Any]:
    return ok(user.get(f"/chat/rooms/{room}/calls/active"))


def history(user: httpx.Client, room: str, call_id: str) -> list[dict[str, Any]]:
    """The room's data-call records of this call (all pages)."""
    found: list[dict[str, Any]] = []
    token = ""
    for _ in range(50):
        params: dict[str, str | int] = {"pageSize": 100, **({"pageToken": token} if token else {})}
        body = ok(user.get(f"/chat/rooms/{room}/messages", params=params))
        for message in body.get("messages", []):
            for part in message.get("parts", []):
                if part.get("type") == "data-call" and part.get("data", {}).get("callId") == (
                    call_id
                ):
                    found.append(part["data"])
        token = body.get("nextPageToken", "")
        if not token:
            break
    return found


def ended_probe(user: httpx.Client, room: str) -> Callable[[], bool]:
    return lambda: active(user, room) == {}


async def direct_call(
    tenant: Tenant, media: Callable[[str], Media], caller: str = "alice", callee: str = "bob"
) -> tuple[str, str, httpx.Client, httpx.Client, Media, Media]:
    """A 1:1 call, accepted, with both sides connected to its media room and seeing each other."""
    room = tenant.room(caller, callee)
    a, b = tenant.user(caller), tenant.user(callee)
    started = start(a, room, type="audio")
    call_id = started["call"]["id"]
    accepted = act(b, room, call_id, "accept")
    assert accepted["call"]["status"] == "active"
    ma = await media(caller).connect(started["livekit"])
    mb = await media(callee).connect(accepted["livekit"])
    await eventually(lambda: callee in ma.sees() and caller in mb.sees(), "both to see each other")
    return room, call_id, a, b, ma, mb


def signed_webhook(
    event: webhook.WebhookEvent, secret: str = DEV_LIVEKIT_SECRET
) -> tuple[str, str]:
    """(body, Authorization) as LiveKit sends them: a JWT whose sha256 claim hashes the body."""
    body = MessageToJson(event)
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    jwt = (
        api.AccessToken("devkey", secret)
        .with_sha256(digest)
        .with_ttl(timedelta(minutes=5))
        .to_jwt()
    )
    return body, jwt


def post_webhook(stack: Stack, body: str, authorization: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/webhook+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    with httpx.Client(base_url=stack.rest, timeout=20) as c:
        return c.post("/livekit/webhook", content=body.encode(), headers=headers)


def participant_left(livekit_room: str, identity: str) -> webhook.WebhookEvent:
    return participant_event("participant_left", livekit_room, identity)


def participant_joined(livekit_room: str, identity: str) -> webhook.WebhookEvent:
    return participant_event("participant_joined", livekit_room, identity)


def participant_event(kind: str, livekit_room: str, identity: str) -> webhook.WebhookEvent:
    return webhook.WebhookEvent(
        event=kind,
        id=f"EV_test_{os.urandom(6).hex()}",
        created_at=int(time.time()),
        room=models.Room(name=livekit_room, sid="RM_test"),
        participant=models.ParticipantInfo(identity=identity, sid="PA_test"),
    )


# --- 1. the token's grant -------------------------------------------------------------------


async def test_callee_token_joins_exactly_the_calls_room(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI, stack: Stack
) -> None:
    room_a = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started_a = start(alice, room_a)
    call_a = started_a["call"]["id"]
    accepted = act(bob, room_a, call_a, "accept")
    token_a = accepted["livekit"]["token"]
    assert accepted["livekit"]["url"] == stack.env()["LIVEKIT_PUBLIC_URL"]

    # The grant: join only, only this call's room, identity = user id, 600 s.
    claims = api.TokenVerifier("devkey", DEV_LIVEKIT_SECRET).verify(token_a)
    assert claims.identity == "bob"
    assert claims.video is not None
    assert claims.video.room == call_a
    assert claims.video.room_join is True
    assert not claims.video.room_admin
    assert not claims.video.room_create
    assert not claims.video.room_list
    assert not claims.video.destination_room

    mb = await media("bob").connect(accepted["livekit"])
    assert mb.room.name == call_a
    assert mb.room.local_participant.identity == "bob"
    assert "bob" in await identities(lk, call_a)

    # Call B in another room, with someone in its media room.
    room_b = tenant.room("carol", "dave")
    carol = tenant.user("carol")
    started_b = start(carol, room_b)
    call_b = started_b["call"]["id"]
    assert call_b != call_a
    mc = await media("carol").connect(started_b["livekit"])
    assert mc.room.name == call_b

    # Another token minted for call A (the caller's) can only ever land in A's room.
    ma = await media("alice").connect(started_a["livekit"])
    assert ma.room.name == call_a
    await eventually(lambda: "bob" in ma.sees(), "alice to see bob in call A's room")
    assert await identities(lk, call_a) == {"alice", "bob"}
    assert await identities(lk, call_b) == {"carol"}
    assert mc.sees() == set()
    assert mb.connected() and ma.connected()

    # Nor does it give any power over B's room through LiveKit's RoomService.
    livekit_http = stack.env()["LIVEKIT_URL"]
    async with httpx.AsyncClient(base_url=livekit_http, timeout=10) as c:
        reply = await c.post(
            "/twirp/livekit.RoomService/ListParticipants",
            json={"room": call_b},
            headers={"Authorization": f"Bearer {token_a}"},
        )
    assert reply.status_code in (401, 403), (reply.status_code, reply.text)


# --- 2. both see each other; audio flows ------------------------------------------------------


async def test_participants_see_each_other_by_user_id(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    _, call_id, *_, ma, mb = await direct_call(tenant, media)
    assert ma.room.name == mb.room.name == call_id
    assert ma.sees() == {"bob"}
    assert mb.sees() == {"alice"}
    assert await identities(lk, call_id) == {"alice", "bob"}


async def test_audio_published_by_one_is_heard_by_the_other(
    tenant: Tenant, media: Callable[[str], Media]
) -> None:
    *_, ma, mb = await direct_call(tenant, media)

    subscribed: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

    @mb.room.on("track_subscribed")
    def _on_track(track: rtc.Track, pub: Any, participant: rtc.RemoteParticipant) -> None:
        audio = track.kind == rtc.TrackKind.KIND_AUDIO
        if audio and participant.identity == "alice" and not subscribed.done():
            subscribed.set_result(track)

    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    await ma.room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )

    sent = 0

    async def speak() -> None:  # a 440 Hz tone, 10 ms frames
        nonlocal sent
        while True:
            frame = rtc.AudioFrame.create(48000, 1, 480)
            samples = frame.data
            for i in range(480):
                samples[i] = int(8000 * math.sin(2 * math.pi * 440 * (sent * 480 + i) / 48000))
            await source.capture_frame(frame)
            sent += 1

    speaker = asyncio.create_task(speak())
    try:
        remote = await asyncio.wait_for(subscribed, WAIT)
        stream = rtc.AudioStream(remote, sample_rate=48000, num_channels=1)
        loudest = 0
        frames = 0

        async def listen() -> None:
            nonlocal loudest, frames
            async for event in stream:
                frames += 1
                loudest = max(loudest, max(abs(s) for s in event.frame.data))
                if frames >= 50 and loudest > 1000:
                    return

        try:
            await asyncio.wait_for(listen(), WAIT)
        except TimeoutError:
            # Everything that tells a media failure from a starved test apart (CI shows
            # only the first lines of a failure, so it is all in the message).
            pytest.fail(
                f"bob heard {frames} frames, loudest sample {loudest}: no tone; alice sent "
                f"{sent} frames (speaker {_task_state(speaker)}); rooms: alice {_state(ma)}, "
                f"bob {_state(mb)}"
            )
        finally:
            await stream.aclose()
    finally:
        speaker.cancel()
        await asyncio.gather(speaker, return_exceptions=True)
    assert frames >= 50 and loudest > 1000


def _state(m: Media) -> str:
    return rtc.ConnectionState.Name(m.room.connection_state)


def _task_state(task: asyncio.Task[Any]) -> str:
    if not task.done():
        return "running"
    return "cancelled" if task.cancelled() else f"died: {task.exception()!r}"


# --- 3. ending the call empties the media room -------------------------------------------------


async def test_end_disconnects_everyone_and_removes_the_livekit_room(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    room, call_id, alice, bob, ma, mb = await direct_call(tenant, media)
    assert call_id in await room_names(lk)

    ended = act(alice, room, call_id, "end")
    assert ended["call"]["status"] == "ended"

    await asyncio.gather(ma.wait_disconnected(), mb.wait_disconnected())
    assert not ma.room.isconnected() and not mb.room.isconnected()

    async def room_gone() -> bool:
        return call_id not in await room_names(lk)

    await eventually(room_gone, "the LiveKit room to be deleted")
    assert active(bob, room) == {}
    records = history(bob, room, call_id)
    assert len(records) == 1, records
    assert records[0]["outcome"] == "completed"
    assert records[0].get("endReason") == "hangup"


# --- 4. a client that drops ends the call through LiveKit's webhooks ---------------------------


async def test_callee_dropping_media_without_rest_ends_the_call(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    room, call_id, alice, _bob, ma, mb = await direct_call(tenant, media)

    await mb.room.disconnect()  # no leave, no end: only LiveKit knows

    await eventually(ended_probe(alice, room), "the call to end via participant_left")
    records = await eventually(lambda: history(alice, room, call_id), "a history message")
    assert len(records) == 1, records
    assert records[0]["outcome"] == "completed"
    assert sorted(records[0]["participants"]) == ["alice", "bob"]
    # The call is over, so the caller's media is torn down too.
    await ma.wait_disconnected()

    async def room_gone() -> bool:
        return call_id not in await room_names(lk)

    await eventually(room_gone, "the LiveKit room to be deleted")


CRASHING_CLIENT = """
import asyncio, sys
from livekit import rtc

async def main():
    room = rtc.Room()
    await room.connect(sys.argv[1], sys.argv[2])
    print("joined", room.name, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_crashed_client_sigkilled_ends_the_call(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room, type="audio")
    call_id = started["call"]["id"]
    accepted = act(bob, room, call_id, "accept")
    ma = await media("alice").connect(started["livekit"])

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_CLIENT,
        accepted["livekit"]["url"],
        accepted["livekit"]["token"],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)  # type: ignore[union-attr]
        assert line.decode().split() == ["joined", call_id], line
        await eventually(lambda: "bob" in ma.sees(), "alice to see bob")
        assert await identities(lk, call_id) == {"alice", "bob"}
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), WAIT)
        killed_at = time.monotonic()

        await eventually(
            ended_probe(alice, room), "the call to end after the crash", within=CRASH_WAIT
        )
        took = time.monotonic() - killed_at
        records = history(bob, room, call_id)
        assert len(records) == 1, records
        assert records[0]["outcome"] == "completed"
        await ma.wait_disconnected()
        print(f"call ended {took:.1f} s after SIGKILL")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- 5. group leave ---------------------------------------------------------------------------


async def test_group_leave_removes_only_that_participant_from_media(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, bob, carol = tenant.user("alice"), tenant.user("bob"), tenant.user("carol")
    started = start(alice, room, type="audio")
    call_id = started["call"]["id"]
    assert started["call"]["status"] == "active"
    joined_b = act(bob, room, call_id, "accept")
    joined_c = act(carol, room, call_id, "accept")
    ma = await media("alice").connect(started["livekit"])
    mb = await media("bob").connect(joined_b["livekit"])
    mc = await media("carol").connect(joined_c["livekit"])
    await eventually(
        lambda: ma.sees() == {"bob", "carol"} and mc.sees() == {"alice", "bob"},
        "everyone to see everyone",
    )

    left = act(bob, room, call_id, "leave")
    assert left["call"]["status"] == "active"

    await mb.wait_disconnected()

    async def bob_gone() -> bool:
        return await identities(lk, call_id) == {"alice", "carol"}

    await eventually(bob_gone, "bob to be removed from the LiveKit room")
    await eventually(lambda: ma.sees() == {"carol"} and mc.sees() == {"alice"}, "bob to vanish")

    # Let LiveKit's participant_left for bob arrive and be handled: nothing else changes.
    await asyncio.sleep(3)
    assert ma.connected() and mc.connected()
    assert await identities(lk, call_id) == {"alice", "carol"}
    call = active(alice, room)["call"]
    assert call["id"] == call_id and call["status"] == "active"
    states = {p["userId"]: p["state"] for p in call["participants"]}
    assert states == {"alice": "joined", "bob": "left", "carol": "joined"}


# --- 6. webhook intake ------------------------------------------------------------------------


async def test_forged_webhooks_are_rejected_and_change_nothing(
    tenant: Tenant, media: Callable[[str], Media], stack: Stack
) -> None:
    room, call_id, alice, _bob, ma, mb = await direct_call(tenant, media)
    leave_bob = participant_left(call_id, "bob")

    # Signed with another secret.
    body, forged = signed_webhook(leave_bob, secret="x" * 40)
    reply = post_webhook(stack, body, forged)
    assert reply.status_code == 401, reply.text
    assert error_reason(reply) == "UNAUTHENTICATED"

    # Well signed, but for another body.
    _, good_jwt = signed_webhook(participant_left(call_id, "nobody"))
    reply = post_webhook(stack, body, good_jwt)
    assert reply.status_code == 401, reply.text
    assert error_reason(reply) == "UNAUTHENTICATED"

    # Signed by the right secret but without a sha256 claim.
    bare = api.AccessToken("devkey", DEV_LIVEKIT_SECRET).to_jwt()
    reply = post_webhook(stack, body, bare)
    assert reply.status_code == 401, reply.text
    assert error_reason(reply) == "UNAUTHENTICATED"

    # No signature at all.
    reply = post_webhook(stack, body, None)
    assert reply.status_code == 401, reply.text
    assert error_reason(reply) == "UNAUTHENTICATED"
    assert "Traceback" not in reply.text

    await asyncio.sleep(0.5)
    call = active(alice, room)["call"]
    assert call["id"] == call_id and call["status"] == "active"
    assert {p["userId"]: p["state"] for p in call["participants"]} == {
        "alice": "joined",
        "bob": "joined",
    }
    assert history(alice, room, call_id) == []
    assert ma.connected() and mb.connected()


async def test_signed_webhook_for_an_unknown_room_is_accepted_and_ignored(
    tenant: Tenant, media: Callable[[str], Media], stack: Stack
) -> None:
    room, call_id, alice, *_ = await direct_call(tenant, media)
    for event in (
        webhook.WebhookEvent(
            event="room_finished",
            id=f"EV_test_{os.urandom(6).hex()}",
            created_at=int(time.time()),
            room=models.Room(name="call_no_such_room", sid="RM_x"),
        ),
        participant_left("call_no_such_room", "alice"),
    ):
        body, jwt = signed_webhook(event)
        reply = post_webhook(stack, body, jwt)
        assert reply.status_code == 200, reply.text

    call = active(alice, room)["call"]
    assert call["id"] == call_id and call["status"] == "active"


async def test_duplicate_participant_left_after_the_end_writes_no_second_history(
    tenant: Tenant, media: Callable[[str], Media], stack: Stack
) -> None:
    room, call_id, alice, bob, _ma, mb = await direct_call(tenant, media)
    await mb.room.disconnect()
    await eventually(ended_probe(alice, room), "the call to end via LiveKit")
    await eventually(lambda: history(alice, room, call_id), "a history message")
    ended = ok(alice.get(f"/chat/rooms/{room}/calls/active"))
    assert ended == {}

    # LiveKit redelivers (at-least-once), and late room_finished arrives too.
    for event in (
        participant_left(call_id, "bob"),
        participant_left(call_id, "bob"),
        participant_left(call_id, "alice"),
        webhook.WebhookEvent(
            event="room_finished",
            id=f"EV_test_{os.urandom(6).hex()}",
            created_at=int(time.time()),
            room=models.Room(name=call_id, sid="RM_x"),
        ),
    ):
        body, jwt = signed_webhook(event)
        reply = post_webhook(stack, body, jwt)
        assert reply.status_code == 200, reply.text

    records = history(bob, room, call_id)
    assert len(records) == 1, records
    assert records[0]["outcome"] == "completed"
    assert active(alice, room) == {}


# --- known service bugs ------------------------------------------------------------------------


async def stays_active(user: httpx.Client, room: str, call_id: str, hold: float) -> dict[str, Any]:
    """Checks for `hold` seconds that the call never stops being active; returns it."""
    deadline = time.monotonic() + hold
    while True:
        body = active(user, room)
        assert body.get("call", {}).get("id") == call_id, f"the call ended: {body}"
        assert body["call"]["status"] == "active", body
        if time.monotonic() > deadline:
            return dict(body["call"])
        await asyncio.sleep(0.25)


async def test_second_device_of_a_user_joining_media_keeps_the_call(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    room, call_id, alice, _bob, ma, mb = await direct_call(tenant, media)
    laptop = start(tenant.user("bob"), room)  # bob's other device: start = rejoin
    assert laptop["call"]["id"] == call_id
    mb2 = await media("bob-laptop").connect(laptop["livekit"])
    await mb.wait_disconnected()
    assert mb.disconnect_reason == rtc.DisconnectReason.DUPLICATE_IDENTITY
    await eventually(lambda: "bob" in ma.sees(), "alice to see bob's laptop")

    # LiveKit's participant_left for the replaced connection arrives within ~1 s.
    call = await stays_active(alice, room, call_id, hold=6)
    assert {p["userId"]: p["state"] for p in call["participants"]} == {
        "alice": "joined",
        "bob": "joined",
    }
    assert mb2.connected() and ma.connected()
    assert await identities(lk, call_id) == {"alice", "bob"}


async def test_group_leave_then_rejoin_survives_the_old_sessions_participant_left(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI, stack: Stack
) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room, type="audio")
    call_id = started["call"]["id"]
    joined = act(bob, room, call_id, "accept")
    ma = await media("alice").connect(started["livekit"])
    mb = await media("bob").connect(joined["livekit"])
    await eventually(lambda: ma.sees() == {"bob"}, "alice to see bob")
    old = mb.room.local_participant
    old_sid, old_joined_ms = old.sid, int(time.time() * 1000)

    await asyncio.sleep(1.05 - time.time() % 1)  # early in a second: a rejoin in the same one
    left_at = time.time()
    act(bob, room, call_id, "leave")
    again = start(bob, room)  # bob changes his mind at once
    assert {p["userId"]: p["state"] for p in again["call"]["participants"]}["bob"] == "joined"
    await mb.wait_disconnected()
    mb2 = await media("bob-again").connect(again["livekit"])
    await eventually(lambda: ma.sees() == {"bob"}, "alice to see bob again")

    # LiveKit's participant_left for the kicked session, as it sends (or resends) it.
    kicked = webhook.WebhookEvent(
        event="participant_left",
        id=f"EV_test_{os.urandom(6).hex()}",
        created_at=int(left_at),
        room=models.Room(name=call_id, sid="RM_test"),
        participant=models.ParticipantInfo(
            identity="bob",
            sid=old_sid,
            joined_at=old_joined_ms // 1000,
            joined_at_ms=old_joined_ms,
            disconnect_reason=models.DisconnectReason.PARTICIPANT_REMOVED,
        ),
    )
    body, jwt = signed_webhook(kicked)
    assert post_webhook(stack, body, jwt).status_code == 200

    await asyncio.sleep(2)
    call = await stays_active(alice, room, call_id, hold=1)
    assert {p["userId"]: p["state"] for p in call["participants"]}["bob"] == "joined", call
    assert mb2.connected()
    assert await identities(lk, call_id) == {"alice", "bob"}
