"""Hostile input over REST through Envoy: control characters anywhere get 400 naming the
field and change nothing; caps hold under concurrency; a page of messages always fits
under the transcoder's 4 MiB response limit."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.chat.service import MAX_MEMBERS, MAX_PARTS, MAX_TEXT
from tests.conftest import Tenant, error_reason


def _violation(reply: httpx.Response) -> tuple[str, str]:
    """(field, reason) of a 400 with a BadRequest."""
    assert reply.status_code == 400, reply.text
    bad = next(d for d in reply.json()["details"] if d["@type"].endswith("BadRequest"))
    return str(bad["fieldViolations"][0]["field"]), error_reason(reply)


def _texts(tenant: Tenant, room: str) -> list[str]:
    with tenant.api() as api:
        reply = api.get(f"/chat/rooms/{room}/messages")
    assert reply.status_code == 200, reply.text
    return [m["parts"][0]["text"] for m in reply.json()["messages"]]


@pytest.mark.parametrize("bad", ["a\u0000b", "\u001b[2J", "bell\u0007"])
def test_control_characters_in_message_text_are_400_and_store_nothing(
    tenant: Tenant, bad: str
) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.post(
            f"/chat/rooms/{room}/messages",
            json={"parts": [{"type": "text", "text": "fine"}, {"type": "text", "text": bad}]},
        )
    assert _violation(reply) == ("parts[1].text", "INVALID_ARGUMENT")
    assert _texts(tenant, room) == []


def test_line_breaks_in_message_text_are_kept(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.post(
            f"/chat/rooms/{room}/messages", json={"parts": [{"type": "text", "text": "a\n\tb"}]}
        )
    assert reply.status_code == 200, reply.text
    assert _texts(tenant, room) == ["a\n\tb"]


def test_control_characters_elsewhere_name_their_field(tenant: Tenant) -> None:
    with tenant.api() as api:
        cases = [
            (api.post("/chat/rooms", json={"members": ["a", "b"], "name": "x\u0000"}), "name"),
            (api.post("/chat/rooms", json={"members": ["a", "b\u0000"]}), "members[1]"),
            (api.post("/v1/sessions", json={"userId": "alice", "name": "A\nB"}), "name"),
            (api.put("/v1/tenant/webhook", json={"url": "http://x/\u0000"}), "url"),
            (api.patch("/v1/tenant/settings", json={"calls": {"defaultType": "\u0000"}}), None),
            (api.get("/chat/rooms/rm_%00/messages"), "roomId"),
        ]
        for reply, field in cases:
            violated, reason = _violation(reply)
            assert reason == "INVALID_ARGUMENT"
            assert field is None or violated == field, (violated, field)
        assert api.get("/v1/tenant/webhook").status_code == 404
        settings = api.get("/v1/tenant/settings").json()["calls"]
        assert settings["defaultType"] == "video"


def test_over_long_strings_are_400(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "alice", "name": "n" * 10_000})
    assert _violation(reply)[0] == "name"


def test_add_member_enforces_the_room_size_cap(tenant: Tenant) -> None:
    members = [f"u{i}" for i in range(MAX_MEMBERS)]
    with tenant.api() as api:
        room = api.post("/chat/rooms", json={"members": members}).json()["id"]
        reply = api.post(f"/chat/rooms/{room}/members", json={"userId": "one-too-many"})
        assert reply.status_code == 409, reply.text
        assert error_reason(reply) == "ROOM_FULL"
        # An existing member is still a no-op, not an error.
        again = api.post(f"/chat/rooms/{room}/members", json={"userId": "u0"})
        assert again.status_code == 200, again.text
        assert (
            len(api.post(f"/chat/rooms/{room}/members", json={"userId": "u1"}).json()["members"])
            == MAX_MEMBERS
        )


def test_concurrent_adds_cannot_pass_the_cap_together(tenant: Tenant) -> None:
    members = [f"u{i}" for i in range(MAX_MEMBERS - 1)]
    with tenant.api() as api:
        room = api.post("/chat/rooms", json={"members": members}).json()["id"]

    def add(user: str) -> int:
        with tenant.api() as api:
            return api.post(f"/chat/rooms/{room}/members", json={"userId": user}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(add, [f"new{i}" for i in range(8)]))
    assert statuses == [200] + [409] * 7
    with tenant.api() as api:
        reply = api.post(f"/chat/rooms/{room}/members", json={"userId": "u0"})
    assert len(reply.json()["members"]) == MAX_MEMBERS


def test_pages_of_the_largest_messages_fit_under_the_response_limit(
    new_tenant: Callable[..., Tenant],
) -> None:
    """Fifteen messages of the largest size allowed (20 parts of 4000 four-byte
    characters, about 320 KB each) are over 4 MiB together: every page still renders."""
    tenant = new_tenant()
    room = tenant.room("alice", "bob")
    big = "\U0001f600" * MAX_TEXT
    with tenant.user("alice") as alice:
        for i in range(15):
            parts = [{"type": "text", "text": big}] * (MAX_PARTS - 1)
            parts.append({"type": "text", "text": f"#{i}"})
            reply = alice.post(f"/chat/rooms/{room}/messages", json={"parts": parts})
            assert reply.status_code == 200, reply.text[:200]
    seen: list[str] = []
    pages = 0
    token = ""
    with tenant.api() as api:
        while True:
            params: dict[str, str | int] = {"pageSize": 100}
            if token:
                params["pageToken"] = token
            reply = api.get(f"/chat/rooms/{room}/messages", params=params)
            assert reply.status_code == 200, reply.text[:300]
            assert len(reply.content) < 4 * 1024 * 1024
            body = reply.json()
            seen += [m["parts"][-1]["text"] for m in body["messages"]]
            pages += 1
            token = body.get("nextPageToken", "")
            if not token:
                break
    assert seen == [f"#{i}" for i in reversed(range(15))]
    assert pages > 1
