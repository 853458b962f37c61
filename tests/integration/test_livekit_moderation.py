"""In-call control against a real LiveKit server and real rtc clients: removal takes a
user out of the media room, a mute really mutes the remote track, an audio call's token
cannot publish a camera, and a call whose clients all left ends as `no_media` through
RoomService reconciliation when LiveKit's webhooks are lost."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from livekit import api, rtc

from tests.conftest import Tenant, create_tenant, error_reason
from tests.integration.test_livekit_media import (
    WAIT,
    Media,
    act,
    active,
    direct_call,
    eventually,
    history,
    start,
)
from tests.stack import Stack, new_workdir

pytestmark = [pytest.mark.livekit]


@pytest.fixture(autouse=True)
def _needs_livekit(stack: Stack) -> None:
    if not stack.livekit_enabled:
        pytest.skip("livekit-server binary not built (make livekit): media tests need it")


async def publish_tone(m: Media) -> rtc.LocalTrackPublication:
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    return await m.room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    )


def remote_audio(m: Media, identity: str) -> rtc.RemoteTrackPublication | None:
    participant = m.room.remote_participants.get(identity)
    if participant is None:
        return None
    return next(
        (p for p in participant.track_publications.values() if p.kind == rtc.TrackKind.KIND_AUDIO),
        None,
    )


async def test_a_removed_participant_is_disconnected_and_cannot_rejoin(
    tenant: Tenant, media: Callable[[str], Media]
) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room, type="audio")
    call = started["call"]["id"]
    joined = act(bob, room, call, "accept")
    ma = await media("alice").connect(started["livekit"])
    mb = await media("bob").connect(joined["livekit"])
    await eventually(lambda: "bob" in ma.sees(), "alice to see bob")

    act(alice, room, call, "participants/bob/remove")
    await mb.wait_disconnected()
    await eventually(lambda: "bob" not in ma.sees(), "bob to be gone from alice's view")
    reply = bob.post(f"/chat/rooms/{room}/calls/{call}/token", json={})
    assert reply.status_code == 403 and error_reason(reply) == "REMOVED_FROM_CALL"
    assert ma.connected()  # the call goes on for the others


async def connected_for(m: Media, seconds: float) -> bool:
    """Whether an rtc client is still connected after `seconds` (False once kicked)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(m.disconnected.wait(), seconds)
    return m.connected()


async def test_a_removed_participant_coming_back_with_the_token_they_hold_is_kicked(
    tenant: Tenant, media: Callable[[str], Media]
) -> None:
    """Media access follows the call: the token bob was given (600 s, refreshed by LiveKit
    while connected) still lets him into the media room after his removal, and LiveKit's
    join webhook takes him out again at once, whatever the attempt."""
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room, type="audio")
    call = started["call"]["id"]
    held = act(bob, room, call, "accept")["livekit"]
    ma = await media("alice").connect(started["livekit"])
    await (await media("bob").connect(held)).room.disconnect()
    with tenant.api() as key:
        assert (
            key.post(f"/chat/rooms/{room}/calls/{call}/participants/bob/remove").status_code == 200
        )
    for attempt in range(2):
        again = await media(f"bob-{attempt}").connect(held)
        await again.wait_disconnected()
        await eventually(lambda: "bob" not in ma.sees(), "bob to be gone from alice's view")
    assert ma.connected() and active(alice, room)["call"]["status"] == "active"
    assert {p["userId"]: p["state"] for p in active(alice, room)["call"]["participants"]}[
        "bob"
    ] == "removed"


async def test_a_participant_who_left_cannot_come_back_past_the_cap(
    tenant: Tenant, media: Callable[[str], Media]
) -> None:
    """Bob left, the call filled up to maxParticipants without him; his old token must not
    make him the cap's plus one."""
    tenant.patch_settings(maxParticipants=2)
    room = tenant.room("alice", "bob", "carol")
    alice, bob, carol = tenant.user("alice"), tenant.user("bob"), tenant.user("carol")
    started = start(alice, room, type="audio")
    call = started["call"]["id"]
    held = act(bob, room, call, "accept")["livekit"]
    act(bob, room, call, "leave")
    act(carol, room, call, "accept")  # two joined: the cap
    back = await media("bob").connect(held)
    await back.wait_disconnected()
    assert not await connected_for(back, 1)


def mute(tenant: Tenant, room: str, call: str, user: str) -> None:
    """The tenant mutes a participant's audio."""
    with tenant.api() as key:
        reply = key.post(
            f"/chat/rooms/{room}/calls/{call}/participants/{user}/mute", json={"kind": "audio"}
        )
    assert reply.status_code == 200, reply.text


async def test_a_mute_takes_the_track_away_and_the_client_cannot_undo_it(
    tenant: Tenant, media: Callable[[str], Media]
) -> None:
    """A moderator's mute is a permission LiveKit enforces: the muted track is gone from
    what the others receive, and the client cannot publish its microphone again."""
    room, call, *_, ma, mb = await direct_call(tenant, media)
    await publish_tone(ma)
    await eventually(lambda: remote_audio(mb, "alice"), "bob to see alice's microphone")
    mute(tenant, room, call, "alice")
    await eventually(lambda: remote_audio(mb, "alice") is None, "alice's microphone to be gone")
    with pytest.raises(Exception):  # noqa: B017  (the SDK's publish error has no public type)
        await asyncio.wait_for(publish_tone(ma), WAIT)
    assert remote_audio(mb, "alice") is None and ma.connected()


async def test_a_mute_outlasts_a_new_media_connection_and_a_refreshed_token(
    tenant: Tenant, media: Callable[[str], Media], lk: api.LiveKitAPI
) -> None:
    """The mute is kept with the participant, not with one media connection: alice
    connecting again with the token she held from before it (LiveKit replaces her first
    connection; she is still joined in the call) has the microphone taken away again, and
    a token refreshed for her has no microphone in it."""
    room, call, alice, _, ma, mb = await direct_call(tenant, media)
    held = act(alice, room, call, "token")["livekit"]  # minted before the mute
    mute(tenant, room, call, "alice")
    again = await media("alice-again").connect(held)  # same identity: alice
    await ma.wait_disconnected()

    async def may_publish() -> bool | None:
        identity = api.RoomParticipantIdentity(room=call, identity="alice")
        info = await lk.room.get_participant(identity)
        return None if info.permission.can_publish else True

    await eventually(may_publish, "alice's new connection to lose the microphone")
    with pytest.raises(Exception):  # noqa: B017  (the SDK's publish error has no public type)
        await asyncio.wait_for(publish_tone(again), WAIT)
    assert remote_audio(mb, "alice") is None and again.connected()
    assert active(alice, room)["call"]["status"] == "active"  # still in the call
    refreshed = act(alice, room, call, "token")["livekit"]["token"]
    payload = refreshed.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert not claims["video"].get("canPublish") and not claims["video"].get("canPublishSources")


async def test_an_audio_call_token_cannot_publish_a_camera(
    tenant: Tenant, media: Callable[[str], Media]
) -> None:
    *_, ma, mb = await direct_call(tenant, media)  # an audio call
    source = rtc.VideoSource(64, 64)
    camera = rtc.LocalVideoTrack.create_video_track("camera", source)
    with pytest.raises(Exception):  # noqa: B017  (the SDK's publish error has no public type)
        await asyncio.wait_for(
            ma.room.local_participant.publish_track(
                camera, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)
            ),
            WAIT,
        )
    await publish_tone(ma)  # what an audio call may publish still works
    await eventually(lambda: remote_audio(mb, "alice"), "bob to see alice's microphone")
    remote = mb.room.remote_participants["alice"]
    assert all(p.kind != rtc.TrackKind.KIND_VIDEO for p in remote.track_publications.values())


# --- lost webhooks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def deaf_stack() -> Iterator[Stack]:
    """A stack whose LiveKit sends its webhooks nowhere, with a short no-media grace and
    frequent reconciliation: only RoomService can tell it who is in a media room."""
    s = Stack(
        workdir=new_workdir(),
        settings={"CALL_MEDIA_GRACE_SECONDS": "8", "CALL_RECONCILE_SECONDS": "1"},
        livekit_webhook_url="http://127.0.0.1:9/livekit/webhook",  # discard port: nothing
    )
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()


def media_deadline(stack: Stack, call: str) -> Any:
    with psycopg.connect(stack.database_url) as db:
        row = db.execute("SELECT media_deadline FROM calls WHERE id = %s", (call,)).fetchone()
    assert row is not None
    return row[0]


async def test_with_webhooks_lost_reconciliation_ends_a_call_everyone_left(
    deaf_stack: Stack, media: Callable[[str], Media]
) -> None:
    tenant = create_tenant(deaf_stack, "deaf")
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room, type="audio")
    call = started["call"]["id"]
    joined = act(bob, room, call, "accept")
    ma = await media("alice").connect(started["livekit"])
    mb = await media("bob").connect(joined["livekit"])
    # No webhook says they are there: reconciliation stops the no-media clock.
    await eventually(
        lambda: media_deadline(deaf_stack, call) is None and active(alice, room) != {},
        "the clock to stop while the call is live",
    )
    await asyncio.sleep(9)  # longer than the grace: the call lives on while they are in it
    assert active(alice, room)["call"]["status"] == "active"

    await ma.room.disconnect()
    await mb.room.disconnect()  # both gone; no participant_left webhook arrives
    await eventually(lambda: active(alice, room) == {}, "the call to end", within=40)
    [record] = history(alice, room, call)
    assert record["endReason"] == "no_media"


async def test_a_call_nobody_ever_joins_ends_as_no_media(deaf_stack: Stack) -> None:
    tenant = create_tenant(deaf_stack, "deaf")
    room = tenant.room("alice", "bob", "carol")
    alice = tenant.user("alice")
    call = start(alice, room)["call"]["id"]
    await eventually(lambda: active(alice, room) == {}, "the call to end", within=30)
    [record] = history(alice, room, call)
    assert record["endReason"] == "no_media"


async def test_with_webhooks_lost_reconciliation_kicks_whoever_is_not_in_the_call(
    deaf_stack: Stack, media: Callable[[str], Media]
) -> None:
    """Reconciliation compares who is in the media room with who is in the call, by
    identity: a removed participant back with a held token is taken out even when no
    webhook ever says he came."""
    tenant = create_tenant(deaf_stack, "deaf")
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room, type="audio")
    call = started["call"]["id"]
    held = act(bob, room, call, "accept")["livekit"]
    ma = await media("alice").connect(started["livekit"])
    act(alice, room, call, "participants/bob/remove")
    back = await media("bob").connect(held)
    await back.wait_disconnected()
    assert ma.connected()
