"""The call lifecycle through REST via Envoy: 1:1 and group, every transition and refusal."""

from __future__ import annotations

import time

import jwt
import pytest
from livekit import api

from services.common.settings import DEV_LIVEKIT_SECRET
from tests.conftest import Tenant
from tests.integration.calls_api import (
    act,
    active,
    calls,
    history,
    refused,
    start,
    states,
    wait_ended,
)
from tests.stack import Stack

# --- 1:1 -----------------------------------------------------------------------------


def test_direct_call_rings_then_is_answered_and_hung_up(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    started = start(alice, room)
    call = started["call"]
    assert (call["status"], call["mode"], call["type"], call["createdBy"]) == (
        "ringing",
        "direct",
        "video",
        "alice",
    )
    assert call["ringTimeoutSeconds"] == 45 and "answeredAt" not in call
    assert states(call) == {"alice": "joined", "bob": "invited"}
    assert active(bob, room)["call"]["id"] == call["id"]

    refused(alice.post(calls(room, call["id"], "accept")), 409, "CANNOT_ACCEPT_OWN_CALL")
    accepted = act(bob, room, call["id"], "accept")
    assert accepted["call"]["status"] == "active" and accepted["call"]["answeredAt"]
    assert states(accepted["call"]) == {"alice": "joined", "bob": "joined"}
    assert accepted["livekit"]["token"]

    ended = act(bob, room, call["id"], "end")["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "hangup") and ended["endedAt"]
    assert states(ended) == {"alice": "left", "bob": "left"}
    refused(alice.post(calls(room, call["id"], "end")), 409, "CALL_ENDED")
    refused(bob.post(calls(room, call["id"], "accept")), 409, "CALL_ENDED")
    refused(bob.post(calls(room, call["id"], "decline")), 409, "CALL_ENDED")
    assert active(alice, room) == {}
    [record] = history(alice, room)
    assert record["outcome"] == "completed" and record["participants"] == ["alice", "bob"]


def test_type_defaults_to_the_tenant_setting_and_can_be_chosen(tenant: Tenant) -> None:
    tenant.patch_settings(defaultType="audio")
    room = tenant.room("alice", "bob")
    assert start(tenant.user("alice"), room)["call"]["type"] == "audio"
    other = tenant.room("alice", "carol")
    assert start(tenant.user("alice"), other, type="video")["call"]["type"] == "video"


def test_decline_ends_a_ringing_direct_call(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = start(alice, room)["call"]["id"]
    refused(alice.post(calls(room, call_id, "decline")), 409, "CANNOT_DECLINE_OWN_CALL")
    declined = act(bob, room, call_id, "decline")["call"]
    assert (declined["status"], declined["endReason"]) == ("ended", "declined")
    assert states(declined)["bob"] == "declined"
    [record] = history(bob, room)
    assert record["outcome"] == "declined" and "answeredAt" not in record


def test_decline_after_answer_is_refused(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    bob = tenant.user("bob")
    call_id = start(tenant.user("alice"), room)["call"]["id"]
    act(bob, room, call_id, "accept")
    refused(bob.post(calls(room, call_id, "decline")), 409, "CALL_NOT_RINGING")
    assert active(bob, room)["call"]["status"] == "active"


@pytest.mark.parametrize("reason", ["cancelled", "no_answer"])
def test_caller_ends_a_ringing_call_with_a_reason(tenant: Tenant, reason: str) -> None:
    room = tenant.room("alice", "bob")
    alice = tenant.user("alice")
    call_id = start(alice, room)["call"]["id"]
    ended = act(alice, room, call_id, "end", reason=reason)["call"]
    assert ended["endReason"] == reason
    [record] = history(alice, room)
    assert (record["outcome"], record["endReason"]) == ("missed", reason)


def test_bad_bodies_are_400_and_change_nothing(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice = tenant.user("alice")
    refused(alice.post(calls(room), json={"type": "fax"}), 400, "INVALID_CALL_TYPE")
    assert active(alice, room) == {}
    call_id = start(alice, room)["call"]["id"]
    refused(
        alice.post(calls(room, call_id, "end"), json={"reason": "bored"}), 400, "INVALID_END_REASON"
    )
    assert active(alice, room)["call"]["status"] == "ringing"
    refused(alice.post(calls(room, call_id, "end"), content=b"{not json"), 400, "MALFORMED_REQUEST")


def test_leave_in_a_direct_call_ends_it(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = start(alice, room)["call"]["id"]
    refused(bob.post(calls(room, call_id, "leave")), 409, "NOT_IN_CALL")  # still ringing for bob
    act(bob, room, call_id, "accept")
    ended = act(alice, room, call_id, "leave")["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "hangup")


def test_callee_start_while_ringing_accepts_and_caller_start_rejoins(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    first = start(alice, room)["call"]
    again = start(alice, room)["call"]  # the caller's other device
    assert again["id"] == first["id"] and again["status"] == "ringing"
    glare = start(bob, room)  # both calling at once yields one call
    assert glare["call"]["id"] == first["id"] and glare["call"]["status"] == "active"
    assert glare["livekit"]["token"]


# --- group ------------------------------------------------------------------------------


def test_group_call_is_active_at_once_and_others_join(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol", "dave")
    alice, bob, carol = tenant.user("alice"), tenant.user("bob"), tenant.user("carol")
    call = start(alice, room)["call"]
    assert (call["status"], call["mode"]) == ("active", "group")
    assert states(call) == {
        "alice": "joined",
        "bob": "invited",
        "carol": "invited",
        "dave": "invited",
    }
    assert act(bob, room, call["id"], "accept")["call"]["answeredAt"]
    rejoined = start(carol, room)["call"]  # start = join the live call
    assert rejoined["id"] == call["id"]
    assert states(rejoined) == {
        "alice": "joined",
        "bob": "joined",
        "carol": "joined",
        "dave": "invited",
    }
    assert start(carol, room)["call"]["id"] == call["id"]  # idempotent


def test_only_the_creator_ends_a_group_call_for_all(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = start(alice, room)["call"]["id"]
    act(bob, room, call_id, "accept")
    refused(bob.post(calls(room, call_id, "end")), 403, "NOT_CALL_CREATOR")
    assert active(bob, room)["call"]["status"] == "active"
    ended = act(alice, room, call_id, "end")["call"]
    assert ended["status"] == "ended" and set(states(ended).values()) <= {"left", "invited"}


def test_group_leave_keeps_the_call_and_the_last_one_out_ends_it(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = start(alice, room)["call"]["id"]
    act(bob, room, call_id, "accept")
    after_alice = act(alice, room, call_id, "leave")["call"]
    assert after_alice["status"] == "active" and states(after_alice)["alice"] == "left"
    refused(alice.post(calls(room, call_id, "leave")), 409, "NOT_IN_CALL")
    last = act(bob, room, call_id, "leave")["call"]
    assert (last["status"], last["endReason"]) == ("ended", "all_left")
    [record] = history(bob, room)
    assert record["outcome"] == "completed" and record["participants"] == ["alice", "bob"]


def test_group_decline_changes_nothing_for_others(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, carol = tenant.user("alice"), tenant.user("carol")
    call_id = start(alice, room)["call"]["id"]
    declined = act(carol, room, call_id, "decline")["call"]
    assert declined["status"] == "active" and states(declined)["carol"] == "declined"
    assert active(alice, room)["call"]["status"] == "active"
    refused(alice.post(calls(room, call_id, "decline")), 409, "ALREADY_JOINED")


def test_max_participants_caps_joins_without_affecting_others(tenant: Tenant) -> None:
    tenant.patch_settings(maxParticipants=2)
    room = tenant.room("alice", "bob", "carol")
    alice, bob, carol = tenant.user("alice"), tenant.user("bob"), tenant.user("carol")
    call_id = start(alice, room)["call"]["id"]
    act(bob, room, call_id, "accept")
    refused(carol.post(calls(room, call_id, "accept")), 409, "CALL_FULL")
    refused(carol.post(calls(room)), 409, "CALL_FULL")
    assert states(active(alice, room)["call"]) == {
        "alice": "joined",
        "bob": "joined",
        "carol": "invited",
    }
    act(bob, room, call_id, "leave")  # a seat frees up
    assert states(act(carol, room, call_id, "accept")["call"])["carol"] == "joined"


def test_token_refresh_is_for_current_participants_only(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = start(alice, room)["call"]["id"]
    fresh = act(alice, room, call_id, "token")
    assert fresh["livekit"]["token"] and fresh["call"]["id"] == call_id
    refused(bob.post(calls(room, call_id, "token")), 403, "NOT_CALL_PARTICIPANT")
    act(alice, room, call_id, "end")
    refused(alice.post(calls(room, call_id, "token")), 409, "CALL_ENDED")


# --- settings and access ------------------------------------------------------------------

ACTIONS = ("accept", "decline", "end", "leave", "token")


def test_calls_disabled_refuses_every_post(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice = tenant.user("alice")
    call_id = start(alice, room)["call"]["id"]
    tenant.patch_settings(enabled=False)
    refused(alice.post(calls(room)), 403, "CALLS_DISABLED")
    for action in ACTIONS:
        refused(alice.post(calls(room, call_id, action)), 403, "CALLS_DISABLED")
    tenant.patch_settings(enabled=True)
    assert active(alice, room)["call"]["id"] == call_id  # nothing changed meanwhile


def test_non_members_other_tenants_and_unknown_calls_are_refused(
    tenant: Tenant, new_tenant: object
) -> None:
    room = tenant.room("alice", "bob")
    call_id = start(tenant.user("alice"), room)["call"]["id"]
    mallory = tenant.user("mallory")
    other = new_tenant().user("alice")  # type: ignore[operator]
    refused(mallory.get(calls(room) + "/active"), 403, "NOT_ROOM_MEMBER")
    refused(other.get(calls(room) + "/active"), 404, "ROOM_NOT_FOUND")
    refused(mallory.post(calls(room)), 403, "NOT_ROOM_MEMBER")
    refused(other.post(calls(room)), 404, "ROOM_NOT_FOUND")
    for action in ACTIONS:
        refused(mallory.post(calls(room, call_id, action)), 403, "NOT_ROOM_MEMBER")
        refused(other.post(calls(room, call_id, action)), 404, "ROOM_NOT_FOUND")
    unknown = "call_" + "0" * 32
    refused(tenant.user("bob").post(calls(room, unknown, "accept")), 404, "CALL_NOT_FOUND")
    with tenant.api() as key:
        refused(key.post(calls(room)), 403, "SESSION_REQUIRED")
    assert states(active(tenant.user("bob"), room)["call"]) == {"alice": "joined", "bob": "invited"}


# --- LiveKit credentials ------------------------------------------------------------------


def test_livekit_token_is_scoped_to_the_call_room_for_600_seconds(
    stack: Stack, tenant: Tenant
) -> None:
    room = tenant.room("alice", "bob")
    first = start(tenant.user("alice"), room)
    accepted = act(tenant.user("bob"), room, first["call"]["id"], "accept")
    assert accepted["livekit"]["url"] == stack.env()["LIVEKIT_PUBLIC_URL"]
    claims = api.TokenVerifier("devkey", DEV_LIVEKIT_SECRET).verify(accepted["livekit"]["token"])
    assert claims.identity == "bob"
    assert claims.video.room_join and claims.video.room == first["call"]["id"]
    assert (
        not claims.video.room_create and not claims.video.room_admin and not claims.video.room_list
    )
    raw = jwt.decode(accepted["livekit"]["token"], options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] == 600
    assert raw["exp"] - time.time() == pytest.approx(600, abs=30)

    act(tenant.user("alice"), room, first["call"]["id"], "end")
    second = start(tenant.user("alice"), room)
    other = api.TokenVerifier("devkey", DEV_LIVEKIT_SECRET).verify(second["livekit"]["token"])
    assert other.video.room == second["call"]["id"] != first["call"]["id"]


# --- ring timeout and history ------------------------------------------------------------------


@pytest.mark.slow
def test_unanswered_call_ends_as_missed_after_the_ring_window(tenant: Tenant) -> None:
    tenant.patch_settings(ringTimeoutSeconds=5)
    room = tenant.room("alice", "bob")
    alice = tenant.user("alice")
    call = start(alice, room)["call"]
    assert call["ringTimeoutSeconds"] == 5
    started = time.monotonic()
    ended_at = wait_ended(alice, room, within=10)
    assert 4.0 <= ended_at - started <= 6.5
    [record] = history(alice, room)
    assert (record["outcome"], record["endReason"], record["callId"]) == (
        "missed",
        "timeout",
        call["id"],
    )
    assert record["durationSeconds"] == 0 and record["initiator"] == "alice"
    assert record["startedAt"] and record["endedAt"] and "answeredAt" not in record
