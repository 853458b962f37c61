"""Ringing done right, end to end (shared/DESIGN.md, "Ringing done right"): REST through
Envoy, real Socket.IO devices, a real webhook receiver. Ring tokens from the call.invite
webhook answer their call and nothing else; busy under "reject"; call.ring_stopped on
every device and the webhook; the ringing list; ringing a group's members again."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.conftest import Tenant, error_reason
from tests.integration.test_events_socketio import Connect
from tests.integration.test_webhooks import Receiver, StartReceiver, put_webhook

WAIT = 20.0


def client(tenant: Tenant, token: str) -> httpx.Client:
    """A REST client presenting any bearer token (here: ring tokens)."""
    return httpx.Client(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


async def post(http: httpx.Client, path: str, **body: Any) -> httpx.Response:
    return await asyncio.to_thread(http.post, path, json=body)


async def ok(http: httpx.Client, path: str, **body: Any) -> dict[str, Any]:
    reply = await post(http, path, **body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def ringing(tenant: Tenant, user: str) -> list[str]:
    """GET /chat/calls/ringing as the user: the ids of the calls ringing for them."""
    with tenant.user(user) as http:
        reply = await asyncio.to_thread(http.get, "/chat/calls/ringing")
    assert reply.status_code == 200, reply.text
    return [c["id"] for c in reply.json().get("calls", [])]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def invite_hit(rec: Receiver, call_id: str, nth: int = 1) -> dict[str, Any]:
    """The nth call.invite webhook of a call."""

    def invites() -> list[dict[str, Any]]:
        return [h.event for h in rec.of("call.invite") if h.event["call"]["id"] == call_id]

    await rec.until(lambda: len(invites()) >= nth, f"call.invite #{nth} of {call_id}")
    return invites()[nth - 1]


async def ring_stops(rec: Receiver, call_id: str, n: int = 1) -> list[dict[str, Any]]:
    def stops() -> list[dict[str, Any]]:
        return [h.event for h in rec.of("call.ring_stopped") if h.event["call"]["id"] == call_id]

    await rec.until(lambda: len(stops()) >= n, f"{n} call.ring_stopped of {call_id}")
    return stops()


def forged(token: str, **claims: Any) -> str:
    """The ring token with its claims changed and its signature kept (so: invalid)."""
    prefix, jwt = token[:3], token[3:]
    header, payload, signature = jwt.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(claims)
    raw = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{prefix}{header}.{raw}.{signature}"


# --- push hook: ring tokens -------------------------------------------------------------


async def test_a_ring_token_answers_its_call_and_nothing_else(
    tenant: Tenant, hook_receiver: StartReceiver, connect: Connect
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url)
    room = tenant.room("alice", "bob")
    other_room = tenant.room("dave", "bob")
    bob_device = await connect(tenant, "bob")
    alice = tenant.user("alice")
    call = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    other = (await ok(tenant.user("dave"), f"/chat/rooms/{other_room}/calls"))["call"]

    invite = await invite_hit(rec, call["id"])
    ring = invite["ring"]
    assert set(ring["tokens"]) == {"bob"}  # the invited users only, never the caller
    deadline = parse_time(call["createdAt"]) + timedelta(seconds=call["ringTimeoutSeconds"])
    assert parse_time(ring["expiresAt"]) == deadline
    token = ring["tokens"]["bob"]
    assert token.startswith("rt_")
    # Sockets never see ring tokens: one answers the call as its user.
    socket_invite = await bob_device.wait_for("call.invite", call["id"])
    assert "ring" not in socket_invite and token not in json.dumps(socket_invite)

    base = f"/chat/rooms/{room}/calls/{call['id']}"
    with client(tenant, token) as bob_ring:
        refused = {
            "another call": await post(
                bob_ring, f"/chat/rooms/{other_room}/calls/{other['id']}/accept"
            ),
            "another endpoint (token)": await post(bob_ring, f"{base}/token"),
            "another endpoint (end)": await post(bob_ring, f"{base}/end"),
            "another endpoint (start)": await post(bob_ring, f"/chat/rooms/{room}/calls"),
            "another endpoint (ringing)": await asyncio.to_thread(
                bob_ring.get, "/chat/calls/ringing"
            ),
            "another endpoint (settings)": await asyncio.to_thread(
                bob_ring.get, "/v1/tenant/settings"
            ),
        }
        for what, reply in refused.items():
            assert reply.status_code == 401, (what, reply.text)
        for claims in ({"sub": "carol"}, {"sub": "alice"}, {"cid": other["id"]}):
            with client(tenant, forged(token, **claims)) as forger:
                reply = await post(forger, f"{base}/accept")
            assert reply.status_code == 401, (claims, reply.text)
        # Nothing above changed either call.
        assert set(await ringing(tenant, "bob")) == {call["id"], other["id"]}

        accepted = await ok(bob_ring, f"{base}/accept")
    assert accepted["call"]["status"] == "active"
    assert accepted["livekit"]["token"] and accepted["livekit"]["url"]
    bob = {p["userId"]: p["state"] for p in accepted["call"]["participants"]}["bob"]
    assert bob == "joined"
    stopped = await bob_device.wait_for("call.ring_stopped", call["id"])
    assert (stopped["reason"], stopped["userIds"], stopped["userId"]) == (
        "accepted",
        ["bob"],
        "bob",
    )
    [hook] = await ring_stops(rec, call["id"])
    assert (hook["reason"], hook["userIds"]) == ("accepted", ["bob"])
    assert "ring" not in hook


async def test_a_ring_token_declines_and_dies_with_the_ring(
    tenant: Tenant, hook_receiver: StartReceiver
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url)
    await asyncio.to_thread(tenant.patch_settings, ringTimeoutSeconds=5)
    alice = tenant.user("alice")
    room = tenant.room("alice", "bob")

    first = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    token = (await invite_hit(rec, first["id"]))["ring"]["tokens"]["bob"]
    with client(tenant, token) as bob_ring:
        declined = await ok(bob_ring, f"/chat/rooms/{room}/calls/{first['id']}/decline")
    assert (declined["call"]["status"], declined["call"]["endReason"]) == ("ended", "declined")

    second = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    token = (await invite_hit(rec, second["id"]))["ring"]["tokens"]["bob"]
    await ring_stops(rec, second["id"])  # rings out after 5 s: timeout
    base = f"/chat/rooms/{room}/calls/{second['id']}"
    with client(tenant, token) as bob_ring:
        for action in ("accept", "decline"):
            reply = await post(bob_ring, f"{base}/{action}")
            assert reply.status_code == 401, reply.text
    [stop] = await ring_stops(rec, second["id"])
    assert (stop["reason"], stop["userIds"]) == ("timeout", ["bob"])


async def test_a_ring_token_is_worth_nothing_once_the_ring_stopped(
    tenant: Tenant, hook_receiver: StartReceiver
) -> None:
    """Answered on another device, bob's ring stopped: the ring token that went through a
    push service must not answer (or reach the media) again, though it has not expired."""
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url)
    alice, bob = tenant.user("alice"), tenant.user("bob")
    room = tenant.room("alice", "bob")
    call = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    token = (await invite_hit(rec, call["id"]))["ring"]["tokens"]["bob"]
    base = f"/chat/rooms/{room}/calls/{call['id']}"
    await ok(bob, f"{base}/accept")  # bob's other device, with his session
    with client(tenant, token) as bob_ring:
        for action in ("accept", "decline"):
            reply = await post(bob_ring, f"{base}/{action}")
            assert (reply.status_code, error_reason(reply)) == (401, "UNAUTHENTICATED"), reply.text
    group = tenant.room("alice", "bob", "carol")
    call = (await ok(alice, f"/chat/rooms/{group}/calls"))["call"]
    token = (await invite_hit(rec, call["id"]))["ring"]["tokens"]["carol"]
    base = f"/chat/rooms/{group}/calls/{call['id']}"
    await ok(tenant.user("carol"), f"{base}/decline")  # a group ring stops for carol alone
    with client(tenant, token) as carol_ring:
        reply = await post(carol_ring, f"{base}/accept")
    assert reply.status_code == 401, reply.text


# --- busy -------------------------------------------------------------------------------------


async def test_busy_reject_ends_concurrent_starts_at_once(
    tenant: Tenant, hook_receiver: StartReceiver, connect: Connect
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url)
    settings = await asyncio.to_thread(tenant.patch_settings, busyPolicy="reject")
    assert settings["busyPolicy"] == "reject"
    # bob is in a call: he accepted carol's.
    busy_room = tenant.room("carol", "bob")
    carol_call = (await ok(tenant.user("carol"), f"/chat/rooms/{busy_room}/calls"))["call"]
    await ok(tenant.user("bob"), f"/chat/rooms/{busy_room}/calls/{carol_call['id']}/accept")
    bob_device = await connect(tenant, "bob")

    callers = [f"caller{i}" for i in range(6)]
    rooms = {c: tenant.room(c, "bob") for c in callers}
    devices = {c: await connect(tenant, c) for c in callers}
    sessions = {c: tenant.user(c) for c in callers}
    replies = await asyncio.gather(
        *(post(sessions[c], f"/chat/rooms/{rooms[c]}/calls") for c in callers)
    )
    ended: list[str] = []
    for reply in replies:
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["call"]["status"], body["call"]["endReason"]) == ("ended", "busy")
        assert "livekit" not in body  # nothing to join
        ended.append(body["call"]["id"])
    for caller, call_id in zip(callers, ended, strict=True):
        await devices[caller].wait_for("call.ended", call_id)
        await bob_device.wait_for("call.missed", call_id)
    await rec.until(lambda: len(rec.of("call.missed")) >= len(callers), "the missed webhooks")
    assert {h.event["call"]["id"] for h in rec.of("call.missed")} == set(ended)
    # Nothing rang: no invite to bob's devices or to the webhook, and nothing is ringing.
    assert bob_device.of("call.invite") == []
    assert [h for h in rec.of("call.invite") if h.event["call"]["id"] in ended] == []
    assert await ringing(tenant, "bob") == []
    history = await asyncio.to_thread(
        sessions[callers[0]].get, f"/chat/rooms/{rooms[callers[0]]}/messages"
    )
    [record] = [
        p["data"]
        for m in history.json()["messages"]
        for p in m["parts"]
        if p["type"] == "data-call"
    ]
    assert (record["outcome"], record["endReason"]) == ("missed", "busy")

    # The default policy rings a busy callee (call waiting).
    await asyncio.to_thread(tenant.patch_settings, busyPolicy="ring")
    waiting = await ok(sessions[callers[0]], f"/chat/rooms/{rooms[callers[0]]}/calls")
    assert waiting["call"]["status"] == "ringing"


async def test_busy_policy_is_validated(tenant: Tenant) -> None:
    assert (await asyncio.to_thread(tenant.patch_settings))["busyPolicy"] == "ring"
    with tenant.api() as api:
        reply = await asyncio.to_thread(
            api.patch, "/v1/tenant/settings", json={"calls": {"busyPolicy": "voicemail"}}
        )
        assert reply.status_code == 400 and error_reason(reply) == "INVALID_ARGUMENT"
        again = await asyncio.to_thread(api.get, "/v1/tenant/settings")
    assert again.json()["calls"]["busyPolicy"] == "ring"


# --- ring_stopped and the ringing list ---------------------------------------------------------


async def test_ring_stopped_reaches_every_device_of_the_callee(
    tenant: Tenant, hook_receiver: StartReceiver, connect: Connect
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url, ["call.ring_stopped"])
    room = tenant.room("alice", "bob")
    phone, laptop = await connect(tenant, "bob", "phone"), await connect(tenant, "bob", "laptop")
    alice, bob = tenant.user("alice"), tenant.user("bob")

    answered = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    await ok(bob, f"/chat/rooms/{room}/calls/{answered['id']}/accept")  # on the phone
    for device in (phone, laptop):
        stop = await device.wait_for("call.ring_stopped", answered["id"])
        assert (stop["reason"], stop["userIds"]) == ("accepted", ["bob"])
    await ok(alice, f"/chat/rooms/{room}/calls/{answered['id']}/end")

    cancelled = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    await ok(alice, f"/chat/rooms/{room}/calls/{cancelled['id']}/end", reason="cancelled")
    for device in (phone, laptop):
        stop = await device.wait_for("call.ring_stopped", cancelled["id"])
        assert stop["reason"] == "cancelled"
    # The caller's devices never rang: no ring_stopped for them.
    alice_device = await connect(tenant, "alice")
    third = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    await ok(bob, f"/chat/rooms/{room}/calls/{third['id']}/decline")
    assert (await laptop.wait_for("call.ring_stopped", third["id"]))["reason"] == "declined"
    await alice_device.wait_for("call.ended", third["id"])
    assert alice_device.of("call.ring_stopped") == []

    await rec.until(lambda: len(rec.hits) >= 3, "three ring_stopped webhooks")
    stops = {h.event["call"]["id"]: h.event["reason"] for h in rec.hits}
    assert stops == {
        answered["id"]: "accepted",
        cancelled["id"]: "cancelled",
        third["id"]: "declined",
    }


async def test_group_invitations_time_out_one_by_one(
    tenant: Tenant, hook_receiver: StartReceiver, connect: Connect
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url)
    await asyncio.to_thread(tenant.patch_settings, ringTimeoutSeconds=5)
    room = tenant.room("alice", "bob", "carol")
    carol_device = await connect(tenant, "carol")
    call = (await ok(tenant.user("alice"), f"/chat/rooms/{room}/calls"))["call"]
    invite = await invite_hit(rec, call["id"])
    assert set(invite["ring"]["tokens"]) == {"bob", "carol"}
    await ok(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call['id']}/accept")

    stop = await carol_device.wait_for("call.ring_stopped", call["id"], within=WAIT + 5)
    assert (stop["reason"], stop["userIds"]) == ("timeout", ["carol"])
    states = {p["userId"]: p["state"] for p in stop["call"]["participants"]}
    assert states == {"alice": "joined", "bob": "joined", "carol": "missed"}
    assert stop["call"]["status"] == "active"  # the call goes on
    assert await ringing(tenant, "carol") == []
    # The expired ring token is refused; carol can still join with her session.
    with client(tenant, invite["ring"]["tokens"]["carol"]) as ring:
        late = await post(ring, f"/chat/rooms/{room}/calls/{call['id']}/accept")
    assert late.status_code == 401
    await ok(tenant.user("carol"), f"/chat/rooms/{room}/calls/{call['id']}/accept")


async def test_the_ringing_list_spans_rooms(
    tenant: Tenant, new_tenant: Callable[[], Tenant]
) -> None:
    alice, bob = tenant.user("alice"), tenant.user("bob")
    direct = tenant.room("alice", "bob")
    group = tenant.room("carol", "bob", "dave")
    one = (await ok(alice, f"/chat/rooms/{direct}/calls"))["call"]
    two = (await ok(tenant.user("carol"), f"/chat/rooms/{group}/calls"))["call"]

    assert set(await ringing(tenant, "bob")) == {one["id"], two["id"]}
    with tenant.user("bob") as http:
        body = (await asyncio.to_thread(http.get, "/chat/calls/ringing")).json()
    by_id = {c["id"]: c for c in body["calls"]}
    assert by_id[one["id"]]["status"] == "ringing" and by_id[two["id"]]["status"] == "active"
    assert await ringing(tenant, "alice") == []  # a caller's own call never rings for them
    assert await ringing(tenant, "carol") == []
    assert await ringing(new_tenant(), "bob") == []  # the same user id elsewhere

    await ok(bob, f"/chat/rooms/{group}/calls/{two['id']}/decline")
    assert await ringing(tenant, "bob") == [one["id"]]
    await ok(bob, f"/chat/rooms/{direct}/calls/{one['id']}/accept")
    assert await ringing(tenant, "bob") == []
    with tenant.api() as api:  # a session endpoint
        reply = await asyncio.to_thread(api.get, "/chat/calls/ringing")
    assert reply.status_code == 403 and error_reason(reply) == "SESSION_REQUIRED"


# --- ring again -------------------------------------------------------------------------------


async def test_ring_again_rings_members_who_are_not_in_the_call(
    tenant: Tenant, hook_receiver: StartReceiver, connect: Connect
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url, ["call.invite"])
    room = tenant.room("alice", "bob", "carol", "dave")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    bob_device = await connect(tenant, "bob")
    call = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    base = f"/chat/rooms/{room}/calls/{call['id']}"
    await ok(bob, f"{base}/decline")
    await ok(tenant.user("dave"), f"{base}/accept")
    await ok(tenant.user("dave"), f"{base}/leave")
    await invite_hit(rec, call["id"])
    assert "bob" not in await ringing(tenant, "bob")

    # Refusals ring nobody.
    refusals: list[tuple[list[str], int, str]] = [
        ([], 400, "INVALID_ARGUMENT"),
        (["bob", "not valid!"], 400, "INVALID_ARGUMENT"),
        ([f"u{i}" for i in range(101)], 400, "INVALID_ARGUMENT"),
        (["bob", "mallory"], 403, "NOT_ROOM_MEMBER"),
        (["bob", "alice"], 409, "ALREADY_JOINED"),
    ]
    for users, status, reason in refusals:
        reply = await post(alice, f"{base}/ring", userIds=users)
        assert (reply.status_code, error_reason(reply)) == (status, reason), (users, reply.text)
    reply = await post(bob, f"{base}/ring", userIds=["dave"])  # bob is not in the call
    assert (reply.status_code, error_reason(reply)) == (403, "NOT_CALL_PARTICIPANT")
    assert await ringing(tenant, "bob") == [] and await ringing(tenant, "dave") == []

    rung = await ok(alice, f"{base}/ring", userIds=["bob", "dave", "bob"])
    states = {p["userId"]: p["state"] for p in rung["call"]["participants"]}
    assert (states["bob"], states["dave"]) == ("invited", "invited")
    again = await invite_hit(rec, call["id"], nth=2)
    assert set(again["ring"]["tokens"]) == {"bob", "dave"}  # only the ones rung again
    assert again["userId"] == "alice"
    # The first invite and the fresh one; the refused attempts above rang nobody.
    await bob_device.until(lambda: len(bob_device.of("call.invite", call["id"])) >= 2, "invite")
    assert len(bob_device.of("call.invite", call["id"])) == 2
    assert await ringing(tenant, "bob") == [call["id"]]
    # The fresh ring token answers.
    with client(tenant, again["ring"]["tokens"]["bob"]) as ring:
        joined = await ok(ring, f"{base}/accept")
    assert {p["userId"]: p["state"] for p in joined["call"]["participants"]}["bob"] == "joined"


async def test_ringing_again_a_member_who_is_still_ringing_rings_nothing_new(
    tenant: Tenant, hook_receiver: StartReceiver, connect: Connect
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url, ["call.invite"])
    room = tenant.room("alice", "bob", "carol")
    alice = tenant.user("alice")
    carol_device = await connect(tenant, "carol")
    call = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    base = f"/chat/rooms/{room}/calls/{call['id']}"
    await ok(tenant.user("bob"), f"{base}/decline")
    await invite_hit(rec, call["id"])
    rung = await ok(alice, f"{base}/ring", userIds=["carol", "bob"])  # carol rings already
    assert {p["userId"]: p["state"] for p in rung["call"]["participants"]}["bob"] == "invited"
    again = await invite_hit(rec, call["id"], nth=2)
    assert set(again["ring"]["tokens"]) == {"bob"}  # carol keeps the ring she has
    await asyncio.sleep(1)
    assert len(carol_device.of("call.invite", call["id"])) == 1


async def test_a_direct_call_cannot_be_rung_again(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    alice = tenant.user("alice")
    call = (await ok(alice, f"/chat/rooms/{room}/calls"))["call"]
    reply = await post(alice, f"/chat/rooms/{room}/calls/{call['id']}/ring", userIds=["bob"])
    assert (reply.status_code, error_reason(reply)) == (409, "NOT_GROUP_CALL")
