"""In-call control through REST via Envoy: moderation (remove, host end) by a group
call's creator or the tenant's API key, custom data on the call everywhere, media
grants by call type, and calls nobody is in ending as `no_media`.
(Media-level checks with real LiveKit clients: test_livekit_moderation.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from livekit import api
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc

from devstack.procs import free_port, grpc_serving
from services.common.settings import DEV_LIVEKIT_SECRET
from tests.conftest import Tenant
from tests.integration.realtime import Device
from tests.integration.test_calls_lifecycle import (
    Users,
    act,
    active,
    calls_path,
    history,
    ok,
    poll,
    refused,
    start,
    states,
)
from tests.stack import Stack

CUSTOM = {"ticket": "T-1042", "priority": 2, "tags": ["vip", "billing"], "meta": {"a": None}}


@pytest.fixture
def users(tenant: Tenant) -> Iterator[Users]:
    u = Users(tenant)
    yield u
    u.close()


def moderate(
    client: httpx.Client, room: str, call: str, user: str, verb: str, **body: Any
) -> httpx.Response:
    return client.post(f"{calls_path(room, call)}/participants/{user}/{verb}", json=body)


def group(tenant: Tenant, users: Users, *joiners: str) -> tuple[str, str]:
    """A group call alice started in a room of alice, bob, carol and dave; `joiners` in."""
    room = tenant.room("alice", "bob", "carol", "dave")
    call = start(users("alice"), room)["call"]["id"]
    for user in joiners:
        act(users(user), room, call, "accept")
    return room, call


# --- remove --------------------------------------------------------------------------------


async def test_the_creator_removes_a_participant_who_then_cannot_come_back(
    tenant: Tenant, users: Users
) -> None:
    room, call = group(tenant, users, "bob", "carol")
    carol = await Device("carol").connect(tenant.rest, tenant.session_token("carol"))
    bob = await Device("bob").connect(tenant.rest, tenant.session_token("bob"))
    try:
        removed = ok(moderate(users("alice"), room, call, "bob", "remove"))["call"]
        assert states(removed)["bob"] == "removed"
        assert removed["status"] == "active"
        for device in (carol, bob):  # everyone hears why; bob's own devices too
            left = await device.wait_for("call.participant_left", call)
            assert (left["userId"], left["reason"]) == ("bob", "removed")
    finally:
        await carol.close()
        await bob.close()
    for verb in ("accept", "token", "decline"):
        refused(users("bob").post(calls_path(room, call, verb), json={}), 403, "REMOVED_FROM_CALL")
    refused(users("bob").post(calls_path(room), json={}), 403, "REMOVED_FROM_CALL")
    assert states(active(users("carol"), room)["call"])["bob"] == "removed"
    # Removing again changes nothing.
    again = ok(moderate(users("alice"), room, call, "bob", "remove"))["call"]
    assert again == removed


def test_removing_the_last_one_in_ends_the_group_call(tenant: Tenant, users: Users) -> None:
    room, call = group(tenant, users)
    with tenant.api() as key:
        ended = ok(moderate(key, room, call, "alice", "remove"))["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "all_left")


def test_who_may_moderate(tenant: Tenant, users: Users) -> None:
    room, call = group(tenant, users, "bob")
    for verb, body in (("remove", {}), ("mute", {"kind": "audio"})):
        refused(moderate(users("bob"), room, call, "alice", verb, **body), 403, "NOT_CALL_CREATOR")
    refused(moderate(users("alice"), room, call, "zed", "remove"), 404, "PARTICIPANT_NOT_FOUND")
    refused(moderate(users("alice"), room, call, "bad user!", "remove"), 400, "INVALID_ARGUMENT")
    refused(
        moderate(users("alice"), room, call, "carol", "mute", kind="screen"),
        400,
        "INVALID_ARGUMENT",
    )
    refused(moderate(users("alice"), room, call, "carol", "mute", kind="audio"), 409, "NOT_IN_CALL")
    # A 1:1 call has no moderator but the tenant.
    direct = tenant.room("erin", "frank")
    call2 = start(users("erin"), direct)["call"]["id"]
    refused(moderate(users("erin"), direct, call2, "frank", "remove"), 403, "NOT_CALL_CREATOR")
    assert states(active(users("bob"), room)["call"]) == {
        "alice": "joined",
        "bob": "joined",
        "carol": "invited",
        "dave": "invited",
    }


def test_a_creator_removed_or_gone_has_no_powers_over_the_call(
    tenant: Tenant, users: Users
) -> None:
    """The creator's powers last while they are in the call: removed by the tenant, alice
    can neither end it for all nor remove or mute anyone; after leaving, she must join
    again first. Nothing changes for the others meanwhile."""
    room, call = group(tenant, users, "bob", "carol")
    with tenant.api() as key:
        ok(moderate(key, room, call, "alice", "remove"))
    alice = users("alice")
    for reply in (
        alice.post(calls_path(room, call, "end"), json={}),
        moderate(alice, room, call, "bob", "remove"),
        moderate(alice, room, call, "bob", "mute", kind="audio"),
    ):
        refused(reply, 403, "REMOVED_FROM_CALL")
    assert states(active(users("bob"), room)["call"])["bob"] == "joined"

    room2, call2 = group(tenant, users, "bob", "carol")
    act(users("alice"), room2, call2, "leave")
    for reply in (
        alice.post(calls_path(room2, call2, "end"), json={}),
        moderate(alice, room2, call2, "bob", "remove"),
    ):
        refused(reply, 409, "NOT_IN_CALL")
    act(users("alice"), room2, call2, "accept")  # back in: her powers with her
    ended = ok(alice.post(calls_path(room2, call2, "end"), json={}))["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "hangup")


def test_the_tenant_ends_a_call_while_its_calls_are_disabled(tenant: Tenant, users: Users) -> None:
    """Disabling calls refuses what app users do, not the tenant's own end: a switch-off
    never strands a live call."""
    room, call = group(tenant, users, "bob")
    tenant.patch_settings(enabled=False)
    refused(users("alice").post(calls_path(room, call, "end"), json={}), 403, "CALLS_DISABLED")
    with tenant.api() as key:
        ended = ok(key.post(calls_path(room, call, "end"), json={}))["call"]
        refused(moderate(key, room, call, "bob", "remove"), 403, "CALLS_DISABLED")
    assert (ended["status"], ended["endReason"]) == ("ended", "ended_by_host")


def test_another_tenants_key_finds_no_call(tenant: Tenant, new_tenant: Any, users: Users) -> None:
    room, call = group(tenant, users, "bob")
    other = new_tenant()
    with other.api() as key:
        refused(moderate(key, room, call, "bob", "remove"), 404, "ROOM_NOT_FOUND")
        refused(key.post(calls_path(room, call, "end"), json={}), 404, "ROOM_NOT_FOUND")
    assert active(users("alice"), room)["call"]["status"] == "active"


def test_the_api_key_removing_one_side_of_a_direct_call_ends_it(
    tenant: Tenant, users: Users
) -> None:
    room = tenant.room("alice", "bob")
    call = start(users("alice"), room)["call"]["id"]
    act(users("bob"), room, call, "accept")
    with tenant.api() as key:
        ended = ok(moderate(key, room, call, "bob", "remove"))["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "ended_by_host")
    assert states(ended) == {"alice": "left", "bob": "removed"}


def test_the_api_key_ends_any_call_as_ended_by_host(tenant: Tenant, users: Users) -> None:
    room, call = group(tenant, users, "bob")
    with tenant.api() as key:
        ended = ok(key.post(calls_path(room, call, "end"), json={}))["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "ended_by_host")
    [record] = [h for h in history(users("bob"), room) if h["callId"] == call]
    assert (record["endReason"], record["outcome"]) == ("ended_by_host", "completed")
    # A session still ends its own way: bob is not the creator.
    room2, call2 = group(tenant, users, "bob")
    refused(users("bob").post(calls_path(room2, call2, "end"), json={}), 403, "NOT_CALL_CREATOR")


# --- custom data -----------------------------------------------------------------------------


async def test_custom_data_travels_with_the_call_everywhere(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    bob = await Device("bob").connect(tenant.rest, tenant.session_token("bob"))
    try:
        started = start(users("alice"), room, type="audio", custom=CUSTOM)["call"]
        assert started["custom"] == CUSTOM
        invite = await bob.wait_for("call.invite", started["id"])
        assert invite["call"]["custom"] == CUSTOM
    finally:
        await bob.close()
    assert active(users("bob"), room)["call"]["custom"] == CUSTOM
    # Starting again joins the live call; its custom data stays the creator's.
    joined = start(users("bob"), room, custom={"other": True})["call"]
    assert joined["id"] == started["id"] and joined["custom"] == CUSTOM
    act(users("alice"), room, started["id"], "end")
    [record] = [h for h in history(users("alice"), room) if h["callId"] == started["id"]]
    assert record["custom"] == CUSTOM


@pytest.mark.parametrize(
    ("custom", "reason"),
    [
        ({"blob": "x" * 4090}, "CUSTOM_TOO_LARGE"),
        (["not", "an", "object"], None),
        ("a string", None),
    ],
)
def test_bad_custom_data_is_refused_and_creates_nothing(
    tenant: Tenant, users: Users, custom: Any, reason: str | None
) -> None:
    room = tenant.room("alice", "bob", "carol")
    reply = users("alice").post(calls_path(room), json={"custom": custom})
    assert reply.status_code == 400, reply.text
    if reason is not None:
        refused(reply, 400, reason)
    assert active(users("alice"), room) == {}


def test_custom_data_of_exactly_4_kib_is_accepted(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    custom = {"blob": ""}
    custom["blob"] = "x" * (4096 - len(json.dumps(custom, separators=(",", ":"))))
    assert start(users("alice"), room, custom=custom)["call"]["custom"] == custom


# --- media grants by call type ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("call_type", "sources"),
    [
        ("audio", ["microphone"]),
        ("video", ["microphone", "camera", "screen_share", "screen_share_audio"]),
    ],
)
def test_media_tokens_may_publish_what_the_call_type_allows(
    tenant: Tenant, users: Users, call_type: str, sources: list[str]
) -> None:
    room = tenant.room("alice", "bob")
    started = start(users("alice"), room, type=call_type)
    call = started["call"]["id"]
    accepted = act(users("bob"), room, call, "accept")
    refreshed = act(users("bob"), room, call, "token")
    verifier = api.TokenVerifier("devkey", DEV_LIVEKIT_SECRET)
    for reply in (started, accepted, refreshed):
        grant = verifier.verify(reply["livekit"]["token"]).video
        assert grant is not None
        assert grant.can_publish_sources == sources


# --- no ghost calls -------------------------------------------------------------------------


def test_a_call_nobody_is_in_ends_as_no_media(tenant: Tenant, users: Users, stack: Stack) -> None:
    """A calls process with a 2 s grace starts the calls (over gRPC); nobody connects
    media, so they end by themselves: a group at once, a 1:1 once accepted."""
    address = f"127.0.0.1:{free_port()}"
    calls = stack.start_worker(
        "calls-short-grace",
        "services.calls",
        ready=lambda: grpc_serving(address),
        GRPC_PORT=address.rsplit(":", 1)[1],
        CALL_MEDIA_GRACE_SECONDS="2",
    )
    try:
        group_room = tenant.room("alice", "bob", "carol")
        direct_room = tenant.room("alice", "dave")
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.CallServiceStub(channel)
            alice = [("authorization", f"Bearer {tenant.session_token('alice')}")]
            dave = [("authorization", f"Bearer {tenant.session_token('dave')}")]
            g = stub.StartCall(pb.StartCallRequest(room_id=group_room), metadata=alice).call
            d = stub.StartCall(pb.StartCallRequest(room_id=direct_room), metadata=alice).call
            time.sleep(3)
            assert active(users("dave"), direct_room)["call"]["status"] == "ringing"  # no clock
            stub.AcceptCall(pb.AcceptCallRequest(room_id=direct_room, call_id=d.id), metadata=dave)
        for room, call_id in ((group_room, g.id), (direct_room, d.id)):

            def ended(r: str = room) -> bool:
                return active(users("alice"), r) == {}

            poll(ended, 15, "the silent call to end")
            [record] = [h for h in history(users("alice"), room) if h["callId"] == call_id]
            assert record["endReason"] == "no_media"
    finally:
        calls.stop()


# --- room membership is the truth -------------------------------------------------------------


async def test_a_member_removed_from_the_room_leaves_its_live_call(
    tenant: Tenant, users: Users
) -> None:
    room, call = group(tenant, users, "bob", "carol")
    bob = await Device("bob").connect(tenant.rest, tenant.session_token("bob"))
    carol = await Device("carol").connect(tenant.rest, tenant.session_token("carol"))
    try:
        with tenant.api() as key:
            ok(key.delete(f"/chat/rooms/{room}/members/bob"))
        left = await carol.wait_for("call.participant_left", call)
        assert (left["userId"], left["reason"]) == ("bob", "removed")
        assert states(active(users("alice"), room)["call"])["bob"] == "removed"
        act(users("alice"), room, call, "end")
        await carol.wait_for("call.ended", call)
        await asyncio.sleep(1)  # anything wrongly routed to bob would be here by now
        assert bob.of("call.participant_left", call) == []
        assert bob.of("call.ended", call) == []
    finally:
        await bob.close()
        await carol.close()
    for verb in ("token", "leave", "accept"):
        refused(users("bob").post(calls_path(room, call, verb), json={}), 403, "NOT_ROOM_MEMBER")


def test_removing_a_side_of_a_direct_call_ends_it_and_the_room_keeps_its_mode(
    tenant: Tenant, users: Users
) -> None:
    room = tenant.room("alice", "bob")
    call = start(users("alice"), room)["call"]["id"]
    with tenant.api() as key:
        ok(key.post(f"/chat/rooms/{room}/members", json={"userId": "carol"}))
        # Three members now, but the ringing call stays 1:1: carol cannot take it.
        refused(
            users("carol").post(calls_path(room, call, "accept"), json={}),
            403,
            "NOT_CALL_PARTICIPANT",
        )
        ok(key.delete(f"/chat/rooms/{room}/members/bob"))
    assert active(users("alice"), room) == {}
    [record] = [h for h in history(users("alice"), room) if h["callId"] == call]
    assert (record["mode"], record["endReason"], record["outcome"]) == (
        "direct",
        "cancelled",
        "missed",
    )


async def test_an_invite_to_a_large_room_reaches_every_part_of_its_audience(
    tenant: Tenant, users: Users
) -> None:
    """More than 500 recipients travel as several messages; each reaches its users once."""
    members = [f"m{i:03d}" for i in range(601)]
    room = tenant.room(*members)
    first = await Device("m001").connect(tenant.rest, tenant.session_token("m001"))
    last = await Device("m600").connect(tenant.rest, tenant.session_token("m600"))
    try:
        call = start(users("m000"), room)["call"]["id"]
        for device in (first, last):
            await device.wait_for("call.invite", call)
        await asyncio.sleep(1)
        assert len(first.of("call.invite", call)) == len(last.of("call.invite", call)) == 1
    finally:
        await first.close()
        await last.close()
