"""Call lifecycle through REST via the real Envoy: 1:1 and group transitions, refusals,
the calls.enabled switch, access control, LiveKit credentials and call history."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from livekit import api
from livekit.api.access_token import Claims

from services.calls.media import room_name
from services.common.settings import DEV_LIVEKIT_SECRET
from tests.conftest import Tenant, error_reason
from tests.stack import Stack

ACTIONS = ("accept", "decline", "end", "leave", "token")
UNKNOWN_CALL = "call_" + "0123456789abcdef" * 2

# --- helpers -----------------------------------------------------------------------------


def calls_path(room: str, call_id: str | None = None, action: str | None = None) -> str:
    path = f"/chat/rooms/{room}/calls"
    if call_id is not None:
        path += f"/{call_id}"
    if action is not None:
        path += f"/{action}"
    return path


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert isinstance(body, dict), body
    return body


def refused(reply: httpx.Response, status: int, reason: str) -> None:
    assert reply.status_code == status, reply.text
    assert error_reason(reply) == reason, reply.text
    body = reply.json()
    assert set(body) >= {"code", "message", "details"}, body


def start(user: httpx.Client, room: str, **body: Any) -> dict[str, Any]:
    return ok(user.post(calls_path(room), json=body))


def act(user: httpx.Client, room: str, call_id: str, action: str, **body: Any) -> dict[str, Any]:
    return ok(user.post(calls_path(room, call_id, action), json=body))


def active(user: httpx.Client, room: str) -> dict[str, Any]:
    return ok(user.get(calls_path(room) + "/active"))


def states(call: dict[str, Any]) -> dict[str, str]:
    return {p["userId"]: p["state"] for p in call["participants"]}


def participant(call: dict[str, Any], user_id: str) -> dict[str, Any]:
    [p] = [p for p in call["participants"] if p["userId"] == user_id]
    return dict(p)


def history(user: httpx.Client, room: str) -> list[dict[str, Any]]:
    """The room's data-call records, newest first."""
    messages = ok(user.get(f"/chat/rooms/{room}/messages", params={"pageSize": 100}))["messages"]
    return [p["data"] for m in messages for p in m["parts"] if p["type"] == "data-call"]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def poll(check: Callable[[], Any], within: float, what: str, every: float = 0.1) -> Any:
    """Calls check until it returns something truthy; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within}s (last: {value!r})")
        time.sleep(every)


def history_rows(stack: Stack, call_id: str) -> int:
    with psycopg.connect(stack.database_url) as db:
        row = db.execute("SELECT count(*) FROM messages WHERE call_id = %s", (call_id,)).fetchone()
    assert row is not None
    return int(row[0])


def verify(token: str) -> Claims:
    """The LiveKit token's claims, checked against the stack's LiveKit key and secret."""
    return api.TokenVerifier(api_key="devkey", api_secret=DEV_LIVEKIT_SECRET).verify(token)


def grant(token: str) -> api.VideoGrants:
    claims = verify(token)
    assert claims.video is not None
    return claims.video


class Users:
    """REST clients acting as app users of one tenant (session tokens), closed at teardown."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self._clients: dict[str, httpx.Client] = {}

    def __call__(self, user_id: str) -> httpx.Client:
        if user_id not in self._clients:
            self._clients[user_id] = self.tenant.user(user_id)
        return self._clients[user_id]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@pytest.fixture
def users(tenant: Tenant) -> Iterator[Users]:
    u = Users(tenant)
    yield u
    u.close()


def ring(tenant: Tenant, users: Users) -> tuple[str, dict[str, Any]]:
    """A 1:1 room where alice is calling bob; the call is ringing."""
    room = tenant.room("alice", "bob")
    call = start(users("alice"), room)["call"]
    assert call["status"] == "ringing"
    return room, call


def answered(tenant: Tenant, users: Users) -> tuple[str, dict[str, Any]]:
    room, call = ring(tenant, users)
    call = act(users("bob"), room, call["id"], "accept")["call"]
    assert call["status"] == "active"
    return room, call


GROUP = ("alice", "bob", "carol", "dave")


def group_call(tenant: Tenant, users: Users) -> tuple[str, dict[str, Any]]:
    room = tenant.room(*GROUP)
    call = start(users("alice"), room)["call"]
    return room, call


# --- 1:1 ---------------------------------------------------------------------------------


def test_no_live_call_gives_an_empty_object(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    assert active(users("alice"), room) == {}
    assert active(users("bob"), room) == {}


def test_direct_start_rings_with_the_tenant_default_type(
    stack: Stack, tenant: Tenant, users: Users
) -> None:
    room = tenant.room("alice", "bob")
    before = time.time()
    reply = start(users("alice"), room)
    call = reply["call"]
    assert call["id"].startswith("call_")
    assert call["roomId"] == room
    assert (call["status"], call["mode"], call["type"]) == ("ringing", "direct", "video")
    assert call["createdBy"] == "alice"
    assert abs(ts(call["createdAt"]).timestamp() - before) < 10
    assert call["ringTimeoutSeconds"] == 45
    for absent in ("answeredAt", "endedAt", "endReason"):
        assert absent not in call, call
    assert states(call) == {"alice": "joined", "bob": "invited"}
    assert participant(call, "alice")["joinedAt"]
    assert "joinedAt" not in participant(call, "bob")
    assert "leftAt" not in participant(call, "alice")
    assert reply["livekit"]["url"] == stack.env()["LIVEKIT_PUBLIC_URL"]
    assert reply["livekit"]["token"]

    seen = active(users("bob"), room)["call"]
    assert (seen["id"], seen["status"]) == (call["id"], "ringing")
    assert states(seen) == {"alice": "joined", "bob": "invited"}


def test_direct_start_with_audio_type(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    call = start(users("alice"), room, type="audio")["call"]
    assert (call["type"], call["status"]) == ("audio", "ringing")
    assert active(users("bob"), room)["call"]["type"] == "audio"


def test_default_type_follows_the_tenant_setting(tenant: Tenant, users: Users) -> None:
    tenant.patch_settings(defaultType="audio")
    room = tenant.room("alice", "bob")
    assert start(users("alice"), room)["call"]["type"] == "audio"


def test_unknown_call_type_is_400_and_starts_nothing(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    refused(users("alice").post(calls_path(room), json={"type": "fax"}), 400, "INVALID_CALL_TYPE")
    assert active(users("bob"), room) == {}


def test_caller_cannot_accept_own_call(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    refused(
        users("alice").post(calls_path(room, call["id"], "accept"), json={}),
        409,
        "CANNOT_ACCEPT_OWN_CALL",
    )
    assert active(users("bob"), room)["call"]["status"] == "ringing"


def test_callee_accept_makes_the_call_active(stack: Stack, tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    reply = act(users("bob"), room, call["id"], "accept")
    accepted = reply["call"]
    assert accepted["id"] == call["id"]
    assert accepted["status"] == "active"
    assert ts(accepted["answeredAt"]) >= ts(accepted["createdAt"])
    assert "endedAt" not in accepted and "endReason" not in accepted
    assert states(accepted) == {"alice": "joined", "bob": "joined"}
    assert participant(accepted, "bob")["joinedAt"]
    assert reply["livekit"]["url"] == stack.env()["LIVEKIT_PUBLIC_URL"]
    assert verify(reply["livekit"]["token"]).identity == "bob"
    assert active(users("alice"), room)["call"]["status"] == "active"
    # accept is idempotent for the one already joined (another device, a retry)
    again = act(users("bob"), room, call["id"], "accept")["call"]
    assert (again["status"], again["answeredAt"]) == ("active", accepted["answeredAt"])


@pytest.mark.parametrize("ender", ["alice", "bob"])
def test_either_side_ends_an_answered_call_with_hangup(
    tenant: Tenant, users: Users, ender: str
) -> None:
    room, call = answered(tenant, users)
    ended = act(users(ender), room, call["id"], "end")["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "hangup")
    assert ts(ended["endedAt"]) >= ts(ended["answeredAt"])
    assert states(ended) == {"alice": "left", "bob": "left"}
    assert all(p["leftAt"] for p in ended["participants"])
    assert active(users("alice"), room) == {}
    assert active(users("bob"), room) == {}

    for who in ("alice", "bob"):
        refused(users(who).post(calls_path(room, call["id"], "end"), json={}), 409, "CALL_ENDED")
    refused(users("bob").post(calls_path(room, call["id"], "accept"), json={}), 409, "CALL_ENDED")
    refused(users("bob").post(calls_path(room, call["id"], "decline"), json={}), 409, "CALL_ENDED")
    refused(users("bob").post(calls_path(room, call["id"], "leave"), json={}), 409, "CALL_ENDED")


def test_accept_after_the_caller_cancelled_is_call_ended(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    act(users("alice"), room, call["id"], "end")
    refused(users("bob").post(calls_path(room, call["id"], "accept"), json={}), 409, "CALL_ENDED")


def test_callee_decline_ends_a_ringing_call_as_declined(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    declined = act(users("bob"), room, call["id"], "decline")["call"]
    assert (declined["status"], declined["endReason"]) == ("ended", "declined")
    assert declined["endedAt"] and "answeredAt" not in declined
    assert states(declined) == {"alice": "left", "bob": "declined"}
    assert active(users("alice"), room) == {}
    refused(users("bob").post(calls_path(room, call["id"], "decline"), json={}), 409, "CALL_ENDED")
    refused(users("bob").post(calls_path(room, call["id"], "accept"), json={}), 409, "CALL_ENDED")


def test_caller_cannot_decline_own_call(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    refused(
        users("alice").post(calls_path(room, call["id"], "decline"), json={}),
        409,
        "CANNOT_DECLINE_OWN_CALL",
    )
    assert active(users("bob"), room)["call"]["status"] == "ringing"


def test_decline_after_answer_is_refused(tenant: Tenant, users: Users) -> None:
    room, call = answered(tenant, users)
    refused(
        users("bob").post(calls_path(room, call["id"], "decline"), json={}),
        409,
        "CALL_NOT_RINGING",
    )
    assert active(users("alice"), room)["call"]["status"] == "active"


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"reason": "cancelled"}, "cancelled"), ({"reason": "no_answer"}, "no_answer"), ({}, None)],
)
def test_caller_ends_a_ringing_call_with_a_reason(
    tenant: Tenant, users: Users, body: dict[str, str], reason: str | None
) -> None:
    room, call = ring(tenant, users)
    ended = act(users("alice"), room, call["id"], "end", **body)["call"]
    assert ended["status"] == "ended"
    assert ended["endReason"] == (reason or "cancelled")  # documented default: cancelled
    assert "answeredAt" not in ended
    assert active(users("bob"), room) == {}


def test_unknown_end_reason_is_400_and_changes_nothing(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    reply = users("alice").post(calls_path(room, call["id"], "end"), json={"reason": "bored"})
    refused(reply, 400, "INVALID_END_REASON")
    assert active(users("bob"), room)["call"]["status"] == "ringing"


def test_callee_end_on_a_ringing_call_is_a_decline(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    ended = act(users("bob"), room, call["id"], "end")["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "declined")


@pytest.mark.parametrize("leaver", ["alice", "bob"])
def test_leave_in_a_direct_call_ends_it(tenant: Tenant, users: Users, leaver: str) -> None:
    room, call = answered(tenant, users)
    left = act(users(leaver), room, call["id"], "leave")["call"]
    assert (left["status"], left["endReason"]) == ("ended", "hangup")
    assert states(left) == {"alice": "left", "bob": "left"}
    assert active(users("alice"), room) == {}


def test_caller_leave_while_ringing_cancels(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    refused(users("bob").post(calls_path(room, call["id"], "leave"), json={}), 409, "NOT_IN_CALL")
    left = act(users("alice"), room, call["id"], "leave")["call"]
    assert (left["status"], left["endReason"]) == ("ended", "cancelled")


def test_callee_start_while_ringing_accepts_the_call(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    reply = start(users("bob"), room, type="audio")
    glare = reply["call"]
    assert glare["id"] == call["id"]
    assert glare["status"] == "active" and glare["answeredAt"]
    assert glare["type"] == call["type"]  # the existing call's type, not the glare request's
    assert states(glare) == {"alice": "joined", "bob": "joined"}
    assert verify(reply["livekit"]["token"]).identity == "bob"
    assert grant(reply["livekit"]["token"]).room == call["id"]
    assert active(users("alice"), room)["call"]["status"] == "active"


def test_caller_start_again_while_ringing_rejoins_the_same_call(
    tenant: Tenant, users: Users
) -> None:
    room, call = ring(tenant, users)
    again = start(users("alice"), room)["call"]
    assert (again["id"], again["status"]) == (call["id"], "ringing")
    assert states(again) == {"alice": "joined", "bob": "invited"}


def add_member(tenant: Tenant, room: str, user_id: str) -> None:
    with tenant.api() as key:
        ok(key.post(f"/chat/rooms/{room}/members", json={"userId": user_id}))


def test_a_member_added_later_cannot_join_an_answered_direct_call(
    tenant: Tenant, users: Users
) -> None:
    room, call = answered(tenant, users)
    add_member(tenant, room, "carol")
    for reply in (
        users("carol").post(calls_path(room, call["id"], "accept"), json={}),
        users("carol").post(calls_path(room), json={}),
    ):
        refused(reply, 403, "NOT_CALL_PARTICIPANT")
    assert states(active(users("alice"), room)["call"]) == {"alice": "joined", "bob": "joined"}


@pytest.mark.parametrize("how", ["accept", "start", "decline"])
def test_a_member_added_later_cannot_answer_or_decline_a_ringing_direct_call(
    tenant: Tenant, users: Users, how: str
) -> None:
    """The 1:1 call is between alice and bob; carol, added to the room while it rings,
    is not its callee: she must not answer it (nor end it for them by declining)."""
    room, call = ring(tenant, users)
    add_member(tenant, room, "carol")
    path = calls_path(room) if how == "start" else calls_path(room, call["id"], how)
    refused(users("carol").post(path, json={}), 403, "NOT_CALL_PARTICIPANT")
    now = active(users("bob"), room)["call"]
    assert (now["id"], now["status"]) == (call["id"], "ringing")
    assert states(now) == {"alice": "joined", "bob": "invited"}


def test_a_new_call_after_the_end_is_a_new_call(tenant: Tenant, users: Users) -> None:
    room, call = answered(tenant, users)
    act(users("alice"), room, call["id"], "end")
    second = start(users("bob"), room)["call"]
    assert second["id"] != call["id"]
    assert (second["status"], second["createdBy"]) == ("ringing", "bob")


# --- group -------------------------------------------------------------------------------


def test_group_start_is_active_at_once_and_invites_the_others(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    assert (call["status"], call["mode"], call["createdBy"]) == ("active", "group", "alice")
    assert "answeredAt" not in call
    assert states(call) == {
        "alice": "joined",
        "bob": "invited",
        "carol": "invited",
        "dave": "invited",
    }
    assert active(users("dave"), room)["call"]["id"] == call["id"]


def test_group_members_join_by_accept_and_by_start(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    by_accept = act(users("bob"), room, call["id"], "accept")
    assert by_accept["call"]["id"] == call["id"]
    assert by_accept["call"]["answeredAt"]
    assert by_accept["livekit"]["token"]
    by_start = start(users("carol"), room)
    assert by_start["call"]["id"] == call["id"]
    assert by_start["call"]["status"] == "active"
    assert states(by_start["call"]) == {
        "alice": "joined",
        "bob": "joined",
        "carol": "joined",
        "dave": "invited",
    }
    assert by_start["call"]["answeredAt"] == by_accept["call"]["answeredAt"]
    # the creator's start is a rejoin too
    assert start(users("alice"), room)["call"]["id"] == call["id"]


def test_only_the_creator_ends_a_group_call_for_all(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    act(users("bob"), room, call["id"], "accept")
    for who in ("bob", "dave"):  # a joined participant, an invited member
        reply = users(who).post(calls_path(room, call["id"], "end"), json={})
        refused(reply, 403, "NOT_CALL_CREATOR")
    assert active(users("alice"), room)["call"]["status"] == "active"
    ended = act(users("alice"), room, call["id"], "end")["call"]
    assert (ended["status"], ended["endReason"]) == ("ended", "hangup")
    assert states(ended) == {"alice": "left", "bob": "left", "carol": "invited", "dave": "invited"}
    for who in GROUP:
        assert active(users(who), room) == {}
    refused(users("carol").post(calls_path(room, call["id"], "accept"), json={}), 409, "CALL_ENDED")


def test_group_leave_keeps_the_call_and_the_last_one_out_ends_it(
    tenant: Tenant, users: Users
) -> None:
    room, call = group_call(tenant, users)
    act(users("bob"), room, call["id"], "accept")
    act(users("carol"), room, call["id"], "accept")

    after_bob = act(users("bob"), room, call["id"], "leave")["call"]
    assert after_bob["status"] == "active"
    assert participant(after_bob, "bob")["state"] == "left"
    assert participant(after_bob, "bob")["leftAt"]
    refused(users("bob").post(calls_path(room, call["id"], "leave"), json={}), 409, "NOT_IN_CALL")

    after_alice = act(users("alice"), room, call["id"], "leave")["call"]  # the creator, too
    assert after_alice["status"] == "active"
    assert states(after_alice) == {
        "alice": "left",
        "bob": "left",
        "carol": "joined",
        "dave": "invited",
    }
    assert active(users("carol"), room)["call"]["status"] == "active"

    last = act(users("carol"), room, call["id"], "leave")["call"]
    assert (last["status"], last["endReason"]) == ("ended", "all_left")
    assert active(users("dave"), room) == {}


def test_a_group_participant_who_left_can_rejoin(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    act(users("bob"), room, call["id"], "accept")
    act(users("bob"), room, call["id"], "leave")
    back = start(users("bob"), room)["call"]
    assert back["id"] == call["id"]
    assert participant(back, "bob")["state"] == "joined"
    assert "leftAt" not in participant(back, "bob")


def test_group_decline_leaves_the_call_unchanged(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    act(users("bob"), room, call["id"], "accept")
    declined = act(users("carol"), room, call["id"], "decline")["call"]
    assert declined["status"] == "active" and "endReason" not in declined
    assert states(declined) == {
        "alice": "joined",
        "bob": "joined",
        "carol": "declined",
        "dave": "invited",
    }
    now = active(users("alice"), room)["call"]
    assert (now["id"], now["status"]) == (call["id"], "active")
    assert states(now) == states(declined)
    # a joined participant cannot decline: they leave instead
    refused(
        users("bob").post(calls_path(room, call["id"], "decline"), json={}), 409, "ALREADY_JOINED"
    )
    # a decliner may still change their mind
    rejoined = act(users("carol"), room, call["id"], "accept")["call"]
    assert participant(rejoined, "carol")["state"] == "joined"


@pytest.mark.parametrize("cap", [2, 3])
def test_max_participants_caps_joined_participants(tenant: Tenant, users: Users, cap: int) -> None:
    assert tenant.patch_settings(maxParticipants=cap)["maxParticipants"] == cap
    room, call = group_call(tenant, users)
    joiners = list(GROUP[1:cap])
    over = GROUP[cap]
    for who in joiners:
        act(users(who), room, call["id"], "accept")
    before = active(users("alice"), room)["call"]
    assert sorted(u for u, s in states(before).items() if s == "joined") == sorted(
        ["alice", *joiners]
    )

    refused(users(over).post(calls_path(room, call["id"], "accept"), json={}), 409, "CALL_FULL")
    refused(users(over).post(calls_path(room), json={}), 409, "CALL_FULL")

    after = active(users("alice"), room)["call"]
    assert after["status"] == "active"
    assert states(after) == states(before)  # nobody else is affected
    assert states(after)[over] == "invited"
    # a joined participant's own retry is not a new join
    assert act(users(joiners[-1]), room, call["id"], "accept")["call"]["status"] == "active"

    # a seat frees up when someone leaves
    act(users(joiners[0]), room, call["id"], "leave")
    seated = act(users(over), room, call["id"], "accept")["call"]
    assert participant(seated, over)["state"] == "joined"


def test_token_refresh_is_for_current_participants_only(
    stack: Stack, tenant: Tenant, users: Users
) -> None:
    room, call = group_call(tenant, users)
    fresh = act(users("alice"), room, call["id"], "token")
    assert fresh["call"]["id"] == call["id"]
    assert fresh["livekit"]["url"] == stack.env()["LIVEKIT_PUBLIC_URL"]
    assert verify(fresh["livekit"]["token"]).identity == "alice"
    assert grant(fresh["livekit"]["token"]).room == call["id"]

    refused(
        users("bob").post(calls_path(room, call["id"], "token"), json={}),
        403,
        "NOT_CALL_PARTICIPANT",
    )
    act(users("bob"), room, call["id"], "accept")
    act(users("bob"), room, call["id"], "leave")
    refused(
        users("bob").post(calls_path(room, call["id"], "token"), json={}),
        403,
        "NOT_CALL_PARTICIPANT",
    )
    act(users("alice"), room, call["id"], "end")
    refused(users("alice").post(calls_path(room, call["id"], "token"), json={}), 409, "CALL_ENDED")


def test_a_ringing_callee_gets_no_media_token_until_answering(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    reply = users("bob").post(calls_path(room, call["id"], "token"), json={})
    refused(reply, 403, "NOT_CALL_PARTICIPANT")
    assert act(users("alice"), room, call["id"], "token")["livekit"]["token"]
    act(users("bob"), room, call["id"], "accept")
    fresh = act(users("bob"), room, call["id"], "token")["livekit"]["token"]
    assert verify(fresh).identity == "bob"


def test_a_member_added_to_the_room_can_join_its_group_call(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    add_member(tenant, room, "erin")
    joined = act(users("erin"), room, call["id"], "accept")["call"]
    assert participant(joined, "erin")["state"] == "joined"


def test_a_room_of_one_cannot_host_a_call(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice")
    refused(users("alice").post(calls_path(room), json={}), 409, "ROOM_TOO_SMALL")


# --- calls.enabled -----------------------------------------------------------------------


def test_calls_disabled_refuses_every_post(tenant: Tenant, users: Users) -> None:
    direct_room, direct = ring(tenant, users)
    group_room, group = group_call(tenant, users)
    act(users("bob"), group_room, group["id"], "accept")
    assert tenant.patch_settings(enabled=False)["enabled"] is False

    for room, call in ((direct_room, direct), (group_room, group)):
        for who in ("alice", "bob"):
            refused(users(who).post(calls_path(room), json={}), 403, "CALLS_DISABLED")
            for action in ACTIONS:
                reply = users(who).post(calls_path(room, call["id"], action), json={})
                refused(reply, 403, "CALLS_DISABLED")
    fresh_room = tenant.room("alice", "erin")
    refused(users("alice").post(calls_path(fresh_room), json={}), 403, "CALLS_DISABLED")

    # nothing changed while disabled
    assert active(users("bob"), direct_room)["call"]["status"] == "ringing"
    assert states(active(users("bob"), group_room)["call"])["bob"] == "joined"
    assert active(users("alice"), fresh_room) == {}

    tenant.patch_settings(enabled=True)
    assert act(users("bob"), direct_room, direct["id"], "accept")["call"]["status"] == "active"


# --- access --------------------------------------------------------------------------------


def test_non_members_are_refused_on_every_endpoint(tenant: Tenant, users: Users) -> None:
    room, call = ring(tenant, users)
    mallory = users("mallory")
    refused(mallory.get(calls_path(room) + "/active"), 403, "NOT_ROOM_MEMBER")
    refused(mallory.post(calls_path(room), json={}), 403, "NOT_ROOM_MEMBER")
    for action in ACTIONS:
        refused(mallory.post(calls_path(room, call["id"], action), json={}), 403, "NOT_ROOM_MEMBER")
    refused(
        mallory.post(calls_path(room, call["id"], "end"), json={"reason": "cancelled"}),
        403,
        "NOT_ROOM_MEMBER",
    )
    now = active(users("bob"), room)["call"]
    assert now["status"] == "ringing"
    assert states(now) == {"alice": "joined", "bob": "invited"}


def test_other_tenants_sessions_get_room_not_found_everywhere(
    tenant: Tenant, users: Users, new_tenant: Callable[..., Tenant]
) -> None:
    room, call = ring(tenant, users)
    other = new_tenant()
    with other.user("alice") as intruder:  # the same user id, in another tenant
        refused(intruder.get(calls_path(room) + "/active"), 404, "ROOM_NOT_FOUND")
        refused(intruder.post(calls_path(room), json={}), 404, "ROOM_NOT_FOUND")
        for action in ACTIONS:
            reply = intruder.post(calls_path(room, call["id"], action), json={})
            refused(reply, 404, "ROOM_NOT_FOUND")
    now = active(users("bob"), room)["call"]
    assert (now["id"], now["status"]) == (call["id"], "ringing")


def test_unknown_call_ids_are_call_not_found(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    other_room, other_call = ring(tenant, users)
    for action in ACTIONS:
        for call_id in (UNKNOWN_CALL, other_call["id"]):  # a real call of another room
            reply = users("bob").post(calls_path(room, call_id, action), json={})
            refused(reply, 404, "CALL_NOT_FOUND")
    assert active(users("bob"), other_room)["call"]["status"] == "ringing"


def test_malformed_call_ids_are_400(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    reply = users("bob").post(calls_path(room, "not-a-call", "accept"), json={})
    assert reply.status_code == 400, reply.text


def test_api_key_is_not_a_session_on_calls_endpoints(tenant: Tenant, users: Users) -> None:
    """The tenant's key only moderates (end, remove, mute: test_in_call_control.py)."""
    room, call = ring(tenant, users)
    with tenant.api() as key:
        refused(key.get(calls_path(room) + "/active"), 403, "SESSION_REQUIRED")
        refused(key.post(calls_path(room), json={}), 403, "SESSION_REQUIRED")
        for action in ACTIONS:
            if action == "end":
                continue
            reply = key.post(calls_path(room, call["id"], action), json={})
            refused(reply, 403, "SESSION_REQUIRED")
    with httpx.Client(
        base_url=tenant.rest, headers={"X-Api-Key": tenant.api_key}, timeout=20
    ) as key:
        refused(key.post(calls_path(room), json={}), 403, "SESSION_REQUIRED")
    assert active(users("bob"), room)["call"]["status"] == "ringing"


def test_no_credentials_is_401(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with httpx.Client(base_url=tenant.rest, timeout=20) as anonymous:
        reply = anonymous.post(calls_path(room), json={})
    assert reply.status_code == 401, reply.text


# --- LiveKit credentials -----------------------------------------------------------------


def assert_scoped(token: str, identity: str, call_id: str) -> None:
    assert verify(token).identity == identity
    video = grant(token)
    assert video.room_join is True
    assert video.room == room_name(call_id) == call_id
    # the grant names that one room and nothing wider
    assert not video.room_create
    assert not video.room_list
    assert not video.room_admin
    assert not video.room_record
    assert not video.destination_room
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iss"] == "devkey"
    assert raw["exp"] - raw["nbf"] == pytest.approx(600, abs=1)
    assert raw["exp"] - time.time() == pytest.approx(600, abs=30)


def test_livekit_tokens_are_scoped_to_the_call_for_600_seconds(
    stack: Stack, tenant: Tenant, users: Users
) -> None:
    room = tenant.room("alice", "bob")
    started = start(users("alice"), room)
    call_id = started["call"]["id"]
    assert_scoped(started["livekit"]["token"], "alice", call_id)
    accepted = act(users("bob"), room, call_id, "accept")
    assert_scoped(accepted["livekit"]["token"], "bob", call_id)
    refreshed = act(users("bob"), room, call_id, "token")
    assert_scoped(refreshed["livekit"]["token"], "bob", call_id)
    for reply in (started, accepted, refreshed):
        assert reply["livekit"]["url"] == stack.env()["LIVEKIT_PUBLIC_URL"]

    with pytest.raises(jwt.InvalidTokenError):  # not signed with any other secret
        api.TokenVerifier(api_key="devkey", api_secret="x" * 48).verify(
            accepted["livekit"]["token"]
        )


def test_every_call_gets_its_own_livekit_room(tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    first = start(users("alice"), room)
    act(users("alice"), room, first["call"]["id"], "end")
    second = start(users("alice"), room)
    elsewhere = start(users("alice"), tenant.room("alice", "carol"))
    rooms = {grant(r["livekit"]["token"]).room for r in (first, second, elsewhere)}
    assert len(rooms) == 3
    assert rooms == {r["call"]["id"] for r in (first, second, elsewhere)}


# --- call history ------------------------------------------------------------------------


def test_history_has_one_record_per_completed_missed_and_declined_call(
    stack: Stack, tenant: Tenant, users: Users
) -> None:
    tenant.patch_settings(ringTimeoutSeconds=5)
    room = tenant.room("alice", "bob")
    alice, bob = users("alice"), users("bob")

    # completed
    completed_id = start(alice, room, type="audio")["call"]["id"]
    act(bob, room, completed_id, "accept")
    time.sleep(1.1)  # so the duration is at least a second
    completed = act(alice, room, completed_id, "end")["call"]

    # declined
    declined_id = start(bob, room)["call"]["id"]
    declined = act(alice, room, declined_id, "decline")["call"]

    # missed: nobody answers within the ring window
    missed_call = start(alice, room)["call"]
    assert missed_call["ringTimeoutSeconds"] == 5
    poll(lambda: active(bob, room) == {}, within=9, what="ring timeout")
    missed = poll(
        lambda: next((r for r in history(bob, room) if r["callId"] == missed_call["id"]), None),
        within=2,
        what="missed record",
    )

    records = history(alice, room)
    assert [r["callId"] for r in records] == [missed_call["id"], declined_id, completed_id]
    assert history(bob, room) == records  # both members see the same timeline
    by_id = {r["callId"]: r for r in records}

    rec = by_id[completed_id]
    assert rec["type"] == "audio" and rec["mode"] == "direct"
    assert (rec["outcome"], rec["endReason"], rec["initiator"]) == ("completed", "hangup", "alice")
    assert sorted(rec["participants"]) == ["alice", "bob"]
    assert rec["startedAt"] == completed["createdAt"]
    assert rec["answeredAt"] == completed["answeredAt"]
    assert rec["endedAt"] == completed["endedAt"]
    expected = (ts(completed["endedAt"]) - ts(completed["answeredAt"])).total_seconds()
    assert isinstance(rec["durationSeconds"], int)
    assert rec["durationSeconds"] == round(expected) >= 1

    rec = by_id[declined_id]
    assert (rec["type"], rec["mode"]) == ("video", "direct")
    assert (rec["outcome"], rec["endReason"], rec["initiator"]) == ("declined", "declined", "bob")
    assert rec["participants"] == ["bob"]
    assert "answeredAt" not in rec
    assert rec["startedAt"] == declined["createdAt"] and rec["endedAt"] == declined["endedAt"]
    assert rec["durationSeconds"] == 0

    assert (missed["outcome"], missed["endReason"], missed["initiator"]) == (
        "missed",
        "timeout",
        "alice",
    )
    assert missed["participants"] == ["alice"]
    assert "answeredAt" not in missed
    assert missed["startedAt"] == missed_call["createdAt"] and missed["endedAt"]
    assert missed["durationSeconds"] == 0

    for call_id in (completed_id, declined_id, missed_call["id"]):
        assert history_rows(stack, call_id) == 1


def test_history_messages_are_sent_by_the_initiator(tenant: Tenant, users: Users) -> None:
    room, call = answered(tenant, users)
    act(users("bob"), room, call["id"], "end")
    messages = ok(users("bob").get(f"/chat/rooms/{room}/messages"))["messages"]
    [message] = [m for m in messages if any(p["type"] == "data-call" for p in m["parts"])]
    assert message["senderId"] == "alice"
    [part] = message["parts"]
    assert part["data"]["callId"] == call["id"]


def test_group_history_lists_who_joined(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    act(users("bob"), room, call["id"], "accept")
    act(users("carol"), room, call["id"], "decline")
    act(users("bob"), room, call["id"], "leave")
    ended = act(users("alice"), room, call["id"], "leave")["call"]
    assert ended["endReason"] == "all_left"
    [record] = history(users("dave"), room)
    assert (record["mode"], record["outcome"], record["endReason"]) == (
        "group",
        "completed",
        "all_left",
    )
    assert sorted(record["participants"]) == ["alice", "bob"]


def test_a_group_call_nobody_joined_is_missed(tenant: Tenant, users: Users) -> None:
    room, call = group_call(tenant, users)
    act(users("alice"), room, call["id"], "end")
    [record] = history(users("bob"), room)
    assert (record["outcome"], record["endReason"], record["participants"]) == (
        "missed",
        "hangup",
        ["alice"],
    )
