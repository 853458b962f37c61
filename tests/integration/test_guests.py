"""Guests and the lobby through REST via Envoy, with real Socket.IO clients and a webhook
receiver (shared/DESIGN.md, "Guests and the lobby"): call links, guest sessions,
knock / admit / deny, what a guest token may do, and the limits."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import psycopg

from services.calls.domain import MAX_WAITING_GUESTS
from services.common.settings import Settings
from tests.conftest import Tenant, error_reason
from tests.integration.test_events_socketio import Connect, open_socket
from tests.integration.test_webhooks import StartReceiver, put_webhook
from tests.stack import Stack

KNOCKS_BURST = Settings.model_fields["GUEST_KNOCKS_BURST"].default
KNOCKS_PER_SECOND = Settings.model_fields["GUEST_KNOCKS_PER_SECOND"].default


def post(client: httpx.Client, path: str, **body: Any) -> httpx.Response:
    return client.post(path, json=body)


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def refused(reply: httpx.Response, status: int, reason: str) -> None:
    assert (reply.status_code, error_reason(reply)) == (status, reason), reply.text


def bearer(tenant: Tenant, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


def group_call(tenant: Tenant, **settings: Any) -> tuple[str, str, httpx.Client]:
    """A live group call alice started (bob invited), guests enabled: (room, call, alice)."""
    tenant.patch_settings(guestsEnabled=True, **settings)
    room = tenant.room("alice", "bob", "carol")
    alice = tenant.user("alice")
    call = ok(post(alice, f"/chat/rooms/{room}/calls"))["call"]["id"]
    return room, call, alice


def link(client: httpx.Client, room: str, call: str, **body: Any) -> dict[str, Any]:
    return ok(post(client, f"/chat/rooms/{room}/calls/{call}/links", **body))


def knock(tenant: Tenant, token: str, name: str = "Ann") -> httpx.Response:
    with bearer(tenant, token) as guest:
        return post(guest, "/v1/guests", name=name)


def participant(call: dict[str, Any], user_id: str) -> dict[str, Any]:
    return next(p for p in call["participants"] if p["userId"] == user_id)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# --- settings and links ---------------------------------------------------------------


def test_guest_settings_are_validated_and_merged(tenant: Tenant) -> None:
    assert tenant.patch_settings(guestsEnabled=True)["lobby"] == "host"  # the default
    calls = tenant.patch_settings(lobby="off")
    assert (calls["guestsEnabled"], calls["lobby"], calls["maxParticipants"]) == (True, "off", 8)
    with tenant.api() as api:
        reply = api.patch("/v1/tenant/settings", json={"calls": {"lobby": "maybe"}})
        refused(reply, 400, "INVALID_ARGUMENT")
        assert api.get("/v1/tenant/settings").json()["calls"]["lobby"] == "off"


def test_app_user_ids_cannot_pass_for_guests(tenant: Tenant) -> None:
    with tenant.api() as api:
        refused(post(api, "/v1/sessions", userId="guest:gst_x"), 400, "INVALID_ARGUMENT")
        refused(post(api, "/chat/rooms", members=["alice", "guest:x"]), 400, "INVALID_ARGUMENT")


def test_links_are_made_listed_and_revoked_by_the_creator_or_the_tenant(
    tenant: Tenant, stack: Stack
) -> None:
    room, call, alice = group_call(tenant)
    made = link(alice, room, call, ttlSeconds=600, maxUses=3)
    assert made["token"].startswith("gl_") and made["link"]["maxUses"] == 3
    assert made["link"]["uses"] == 0
    with psycopg.connect(stack.database_url) as db:
        stored = db.execute(
            "SELECT secret_hash FROM call_links WHERE id = %s", (made["link"]["id"],)
        ).fetchone()
    assert stored is not None and stored[0] not in made["token"]  # kept hashed only
    with tenant.api() as api:
        other = link(api, room, call)
        assert other["link"]["maxUses"] == 100  # defaults: a day, 100 uses
        listed = ok(api.get(f"/chat/rooms/{room}/calls/{call}/links"))["links"]
        assert {lk["id"] for lk in listed} == {made["link"]["id"], other["link"]["id"]}
        assert "token" not in json.dumps(listed)
        ok(api.delete(f"/chat/rooms/{room}/calls/{call}/links/{other['link']['id']}"))
    refused(knock(tenant, other["token"]), 401, "LINK_INVALID")
    listed = ok(alice.get(f"/chat/rooms/{room}/calls/{call}/links"))["links"]
    assert [lk["id"] for lk in listed] == [made["link"]["id"]]
    with tenant.user("bob") as bob:  # not the creator
        refused(post(bob, f"/chat/rooms/{room}/calls/{call}/links"), 403, "NOT_CALL_CREATOR")
    for body in ({"ttlSeconds": 59}, {"ttlSeconds": 604801}, {"maxUses": 0}, {"maxUses": 1001}):
        refused(
            post(alice, f"/chat/rooms/{room}/calls/{call}/links", **body), 400, "INVALID_ARGUMENT"
        )


def test_a_link_is_refused_while_guests_are_disabled(tenant: Tenant) -> None:
    room, call, alice = group_call(tenant)
    tenant.patch_settings(guestsEnabled=False)
    refused(post(alice, f"/chat/rooms/{room}/calls/{call}/links"), 403, "GUESTS_DISABLED")


def test_an_expired_used_up_or_ended_link_is_invalid(tenant: Tenant, stack: Stack) -> None:
    room, call, alice = group_call(tenant)
    once = link(alice, room, call, maxUses=1)
    ok(knock(tenant, once["token"]))
    refused(knock(tenant, once["token"]), 401, "LINK_INVALID")  # used up
    old = link(alice, room, call)
    with psycopg.connect(stack.database_url) as db:
        db.execute(
            "UPDATE call_links SET expires_at = now() - interval '1 second' WHERE id = %s",
            (old["link"]["id"],),
        )
    refused(knock(tenant, old["token"]), 401, "LINK_INVALID")  # expired
    alive = link(alice, room, call)
    ok(post(alice, f"/chat/rooms/{room}/calls/{call}/end"))
    refused(knock(tenant, alive["token"]), 401, "LINK_INVALID")  # its call ended
    refused(knock(tenant, alive["token"][:-2] + "xx"), 401, "LINK_INVALID")  # forged
    refused(knock(tenant, "gl_nothing"), 401, "LINK_INVALID")


async def test_concurrent_knocks_never_use_a_link_more_than_its_max(tenant: Tenant) -> None:
    room, call, alice = group_call(tenant)
    made = link(alice, room, call, maxUses=5)
    async with httpx.AsyncClient(base_url=tenant.rest, timeout=30) as http:
        replies = await asyncio.gather(
            *(
                http.post(
                    "/v1/guests",
                    json={"name": f"g{i}"},
                    headers={"Authorization": f"Bearer {made['token']}"},
                )
                for i in range(16)
            )
        )
    assert sorted(r.status_code for r in replies) == [200] * 5 + [401] * 11
    listed = ok(alice.get(f"/chat/rooms/{room}/calls/{call}/links"))["links"]
    assert listed == []  # used up: no longer listed
    waiting = [
        p
        for p in ok(alice.get(f"/chat/rooms/{room}/calls/active"))["call"]["participants"]
        if p["state"] == "waiting"
    ]
    assert len(waiting) == 5


# --- the lobby --------------------------------------------------------------------------


async def test_knock_admit_accept_with_sockets_and_webhooks(
    tenant: Tenant, connect: Connect, stack: Stack, hook_receiver: StartReceiver
) -> None:
    rec = await hook_receiver()
    await put_webhook(tenant, rec.url, ["call.knock", "call.admitted"])
    room, call, alice = group_call(tenant)
    alice_device = await connect(tenant, "alice")
    made = link(alice, room, call)
    guest = ok(knock(tenant, made["token"], name="Ann Example"))
    gid, token = guest["guestId"], guest["token"]
    me = f"guest:{gid}"
    assert participant(guest["call"], me) == {
        "userId": me,
        "state": "waiting",
        "guest": True,
        "name": "Ann Example",
    }
    assert "guest" not in participant(guest["call"], "alice")  # members carry no guest flag
    knocked = await alice_device.wait_for("call.knock", call)
    assert knocked["userId"] == me
    assert (await rec.wait_for("call.knock")).event["userId"] == me

    ann = await open_socket(stack.rest, token, "ann")
    await ann.until(lambda: bool(ann.syncs), "call.sync")
    assert [c["id"] for c in ann.syncs[0]["calls"]] == [call]
    with bearer(tenant, token) as as_guest:
        refused(post(as_guest, f"/chat/rooms/{room}/calls/{call}/accept"), 409, "NOT_ADMITTED")
        ok(post(alice, f"/chat/rooms/{room}/calls/{call}/participants/{gid}/admit"))
        await ann.wait_for("call.admitted", call)
        joined = ok(post(as_guest, f"/chat/rooms/{room}/calls/{call}/accept"))
        assert participant(joined["call"], me)["state"] == "joined"
        assert jwt_claims(joined["livekit"]["token"])["sub"] == me  # LiveKit identity
        assert jwt_claims(joined["livekit"]["token"])["video"]["room"] == call
        renewed = ok(post(as_guest, f"/chat/rooms/{room}/calls/{call}/token"))
        assert jwt_claims(renewed["livekit"]["token"])["sub"] == me
        ok(post(as_guest, f"/chat/rooms/{room}/calls/{call}/leave"))
    await alice_device.until(
        lambda: bool(alice_device.of("call.participant_left", call)), "the guest's leave"
    )
    ok(post(alice, f"/chat/rooms/{room}/calls/{call}/end"))
    history = ok(alice.get(f"/chat/rooms/{room}/messages"))["messages"][0]["parts"][0]["data"]
    assert history["guests"] == [{"userId": me, "name": "Ann Example"}]
    assert me in history["participants"]
    await ann.sio.disconnect()


async def test_a_denied_guest_stays_out(tenant: Tenant, stack: Stack) -> None:
    room, call, alice = group_call(tenant)
    guest = ok(knock(tenant, link(alice, room, call)["token"]))
    ann = await open_socket(stack.rest, guest["token"], "ann")
    with tenant.api() as api:
        ok(post(api, f"/chat/rooms/{room}/calls/{call}/participants/{guest['guestId']}/deny"))
    await ann.wait_for("call.denied", call)
    with bearer(tenant, guest["token"]) as as_guest:
        refused(post(as_guest, f"/chat/rooms/{room}/calls/{call}/accept"), 403, "REMOVED_FROM_CALL")
    await ann.sio.disconnect()


def test_with_the_lobby_off_a_guest_joins_at_once_and_counts_against_the_cap(
    tenant: Tenant,
) -> None:
    room, call, alice = group_call(tenant, lobby="off", maxParticipants=2)
    first = ok(knock(tenant, link(alice, room, call)["token"]))
    assert participant(first["call"], f"guest:{first['guestId']}")["state"] == "invited"
    with bearer(tenant, first["token"]) as as_guest:
        ok(post(as_guest, f"/chat/rooms/{room}/calls/{call}/accept"))
    tenant.patch_settings(lobby="host")
    second = ok(knock(tenant, link(alice, room, call)["token"]))
    admit = f"/chat/rooms/{room}/calls/{call}/participants/{second['guestId']}/admit"
    refused(post(alice, admit), 409, "CALL_FULL")  # alice and the first guest: full


def test_the_lobby_and_the_link_are_bounded(tenant: Tenant) -> None:
    room, call, alice = group_call(tenant)
    token = link(alice, room, call, maxUses=1000)["token"]
    reasons: list[str] = []
    began = time.monotonic()
    with bearer(tenant, token) as guest:
        # Three bursts' worth, through the test stack's two calls processes: the link's
        # bucket is one for all of them (kept with the link), not one per process.
        for i in range(3 * KNOCKS_BURST):
            reply = post(guest, "/v1/guests", name=f"g{i}")
            reasons.append("ok" if reply.status_code == 200 else error_reason(reply))
    refilled = (time.monotonic() - began) * KNOCKS_PER_SECOND
    # One link's knocks are rate limited past its burst (and what refilled meanwhile).
    assert reasons[:KNOCKS_BURST] == ["ok"] * KNOCKS_BURST
    assert reasons.count("ok") <= KNOCKS_BURST + refilled + 1, reasons
    assert set(reasons) == {"ok", "RATE_LIMITED"}
    # A refused knock counted no use of the link.
    uses = ok(alice.get(f"/chat/rooms/{room}/calls/{call}/links"))["links"][0]["uses"]
    assert uses == reasons.count("ok")
    # Knocks over other links (each link its own rate) fill the lobby to its 50, then
    # the call refuses more.
    knocked = reasons.count("ok")
    full: list[str] = []
    while knocked + len(full) < MAX_WAITING_GUESTS + 5:
        with bearer(tenant, link(alice, room, call, maxUses=1000)["token"]) as guest:
            for i in range(KNOCKS_BURST):
                reply = post(guest, "/v1/guests", name=f"h{i}")
                if reply.status_code == 200:
                    knocked += 1
                else:
                    assert reply.status_code == 429, reply.text
                    full.append(error_reason(reply))
    assert knocked == MAX_WAITING_GUESTS
    assert set(full) == {"LOBBY_FULL"}
    waiting = [
        p
        for p in ok(alice.get(f"/chat/rooms/{room}/calls/active"))["call"]["participants"]
        if p["state"] == "waiting"
    ]
    assert len(waiting) == MAX_WAITING_GUESTS


# --- what a guest token may do ---------------------------------------------------------


def test_a_guest_token_does_nothing_but_its_own_calls_few_things(tenant: Tenant) -> None:
    room, call, alice = group_call(tenant, lobby="off")
    guest = ok(knock(tenant, link(alice, room, call)["token"]))
    other_room = tenant.room("alice", "bob")
    other = ok(post(alice, f"/chat/rooms/{other_room}/calls"))["call"]["id"]
    base = f"/chat/rooms/{room}/calls/{call}"
    gid = guest["guestId"]
    with bearer(tenant, guest["token"]) as g:
        attempts = [
            g.get(f"/chat/rooms/{room}/calls/active"),
            post(g, f"/chat/rooms/{room}/calls"),
            post(g, f"{base}/decline"),
            post(g, f"{base}/end"),
            post(g, f"{base}/ring", userIds=["bob"]),
            post(g, f"{base}/participants/alice/remove"),
            post(g, f"{base}/participants/alice/mute", kind="audio"),
            post(g, f"{base}/links"),
            g.get(f"{base}/links"),
            post(g, f"{base}/participants/{gid}/admit"),
            post(g, f"/chat/rooms/{other_room}/calls/{other}/accept"),  # another call
            post(g, f"/chat/rooms/{other_room}/calls/{other}/token"),
            g.get("/chat/calls/ringing"),
            g.get(f"/chat/rooms/{room}/messages"),
            post(g, f"/chat/rooms/{room}/messages", parts=[{"type": "text", "text": "hi"}]),
            post(g, "/chat/rooms", members=["a", "b"]),
            g.get("/v1/tenant/settings"),
            post(g, "/v1/sessions", userId="mallory"),
            g.get("/v1/tenant/webhook"),
            post(g, "/v1/guests", name="again"),  # a guest session is not a link
            post(g, f"{base}/participants/{gid}/deny"),
            g.delete(f"{base}/links/lnk_{'0' * 32}"),
            post(g, f"/chat/rooms/{other_room}/calls/{other}/leave"),  # another call
            g.patch("/v1/tenant/settings", json={"calls": {"lobby": "off"}}),
            g.put("/v1/tenant/webhook", json={"url": "https://example.com/hooks"}),
            g.delete("/v1/tenant/webhook"),
            post(g, "/v1/tenant/api-keys"),
            g.get("/v1/tenant/api-keys"),
            g.delete(f"/v1/tenant/api-keys/key_{'0' * 32}"),
            post(g, f"/chat/rooms/{room}/members", userId="mallory"),
            g.delete(f"/chat/rooms/{room}/members/alice"),
            g.get("/v1/events"),
            g.get("/v1/webhook/deliveries"),
            post(g, f"/v1/webhook/deliveries/whd_{'0' * 32}/retry"),
            post(g, "/v1/webhook/replay", **{"from": "2026-01-01T00:00:00Z"}),
        ]
        for reply in attempts:
            assert reply.status_code in (401, 403), (reply.request.url, reply.text)
        more = [
            g.get(f"/v1/calls/{other}"),  # another call: as if it did not exist
            g.get("/v1/calls"),
            g.get(
                "/v1/usage", params={"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
            ),
        ]
        for reply in more:
            assert reply.status_code in (401, 403, 404), (reply.request.url, reply.text)
        assert ok(g.get(f"/v1/calls/{call}"))["call"]["id"] == call  # its own call
        ok(post(g, f"{base}/accept"))  # what it may do still works
    # The tenant's call log finds the guest's calls by its participant id.
    with tenant.api() as api:
        listed = ok(api.get("/v1/calls", params={"userId": f"guest:{gid}"}))["calls"]
    assert [c["id"] for c in listed] == [call]


async def test_a_guest_socket_hears_its_call_only(
    tenant: Tenant, stack: Stack, connect: Connect
) -> None:
    room, call, alice = group_call(tenant, lobby="off")
    guest = ok(knock(tenant, link(alice, room, call)["token"]))
    ann = await open_socket(stack.rest, guest["token"], "ann")
    await ann.until(lambda: bool(ann.syncs), "call.sync")
    other_room = tenant.room("alice", "bob")
    other = ok(post(alice, f"/chat/rooms/{other_room}/calls"))["call"]["id"]
    with bearer(tenant, guest["token"]) as g:
        ok(post(g, f"/chat/rooms/{room}/calls/{call}/accept"))
    ok(post(tenant.user("bob"), f"/chat/rooms/{room}/calls/{call}/accept"))
    await ann.until(lambda: len(ann.of("call.participant_joined", call)) >= 2, "joins")
    await asyncio.sleep(1)
    assert {e["call"]["id"] for e in ann.of()} == {call}
    assert other not in json.dumps(ann.events)
    await ann.sio.disconnect()
