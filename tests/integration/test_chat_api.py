"""ChatService over REST through the real Envoy: rooms, members, the timeline, isolation."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from tests.conftest import Tenant, error_reason

UNKNOWN_ROOM = "rm_" + "0" * 32
ROOM_ID = re.compile(r"^rm_[0-9a-f]{32}$")


def _messages(room_id: str) -> str:
    return f"/chat/rooms/{room_id}/messages"


def _text(text: str) -> dict[str, object]:
    return {"parts": [{"type": "text", "text": text}]}


def _post(client: httpx.Client, room_id: str, text: str) -> dict[str, object]:
    reply = client.post(_messages(room_id), json=_text(text))
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _texts(body: dict[str, object]) -> list[str]:
    messages = body["messages"]
    assert isinstance(messages, list)
    return [m["parts"][0]["text"] for m in messages]


def _all_texts(tenant: Tenant, room_id: str) -> list[str]:
    """The whole timeline as the tenant's backend sees it (API key), newest first."""
    with tenant.api() as api:
        reply = api.get(_messages(room_id), params={"pageSize": 100})
    assert reply.status_code == 200, reply.text
    return _texts(reply.json())


def _expect(reply: httpx.Response, status: int, reason: str) -> None:
    assert reply.status_code == status, reply.text
    assert error_reason(reply) == reason


# --- rooms -------------------------------------------------------------------------


def test_create_room_returns_the_room(tenant: Tenant) -> None:
    with tenant.api() as api:
        started = time.time()
        reply = api.post("/chat/rooms", json={"members": ["alice", "bob"], "name": "Support"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"id", "name", "members", "createdAt"}
    assert ROOM_ID.match(body["id"])
    assert body["name"] == "Support"
    assert sorted(body["members"]) == ["alice", "bob"]
    created = datetime.fromisoformat(body["createdAt"]).timestamp()
    assert started - 30 <= created <= time.time() + 30


def test_create_room_without_name_and_fresh_ids(tenant: Tenant) -> None:
    with tenant.api() as api:
        first = api.post("/chat/rooms", json={"members": ["alice"]})
        second = api.post("/chat/rooms", json={"members": ["alice"]})
    assert first.status_code == second.status_code == 200
    assert first.json()["name"] == ""
    assert first.json()["id"] != second.json()["id"]


def test_create_room_dedupes_members(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/chat/rooms", json={"members": ["bob", "alice", "bob", "alice"]})
    assert reply.status_code == 200, reply.text
    members = reply.json()["members"]
    assert sorted(members) == ["alice", "bob"]
    assert len(members) == 2


@pytest.mark.parametrize(
    "members",
    [[], [""], ["a b"], ["x" * 129], ["alice", "bad/id"], ["alice", " "]],
)
def test_create_room_with_invalid_members_is_400(tenant: Tenant, members: list[str]) -> None:
    with tenant.api() as api:
        reply = api.post("/chat/rooms", json={"members": members})
    _expect(reply, 400, "INVALID_ARGUMENT")


def test_create_room_with_overlong_name_is_400(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/chat/rooms", json={"members": ["alice"], "name": "n" * 201})
    _expect(reply, 400, "INVALID_ARGUMENT")


def test_create_room_rejects_member_id_with_trailing_newline(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/chat/rooms", json={"members": ["alice", "bob\n"]})
    _expect(reply, 400, "INVALID_ARGUMENT")


# --- membership ----------------------------------------------------------------------


def test_non_member_gets_403_on_messages(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        _post(alice, room, "secret plans")
    with tenant.user("mallory") as mallory:
        _expect(mallory.get(_messages(room)), 403, "NOT_ROOM_MEMBER")
        _expect(mallory.post(_messages(room), json=_text("hi")), 403, "NOT_ROOM_MEMBER")
    assert _all_texts(tenant, room) == ["secret plans"]


def test_member_posts_text_and_members_list_it(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        posted = _post(alice, room, "hello bob")
    assert str(posted["id"]).startswith("msg_")
    assert posted["roomId"] == room
    assert posted["senderId"] == "alice"
    assert posted["parts"] == [{"type": "text", "text": "hello bob"}]
    assert "createdAt" in posted
    with tenant.user("bob") as bob:
        reply = bob.get(_messages(room))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["nextPageToken"] == ""
    assert len(body["messages"]) == 1
    listed = body["messages"][0]
    assert listed["id"] == posted["id"]
    assert listed["senderId"] == "alice"
    assert listed["parts"] == [{"type": "text", "text": "hello bob"}]
    # the tenant's backend reads the timeline with its API key
    assert _all_texts(tenant, room) == ["hello bob"]


def test_api_key_cannot_post_messages(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.api() as api:
        _expect(api.post(_messages(room), json=_text("from backend")), 403, "SESSION_REQUIRED")
    assert _all_texts(tenant, room) == []


@pytest.mark.parametrize(
    "parts",
    [
        [{"type": "data-call"}],
        [{"type": "data-call", "data": {"callId": "cl_" + "0" * 32, "outcome": "completed"}}],
        [{"type": "text", "text": "ok"}, {"type": "data-call"}],
        [{"type": "image", "text": "x"}],
        [],
        [{"type": "text"}],
        [{"type": "text", "text": ""}],
        [{"type": "text", "text": "x" * 4001}],
        [{"type": "text", "text": "x"}] * 21,
    ],
)
def test_invalid_parts_are_400_and_store_nothing(tenant: Tenant, parts: list[object]) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.post(_messages(room), json={"parts": parts})
    assert reply.status_code == 400, reply.text
    assert _all_texts(tenant, room) == []


def test_missing_parts_is_400(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        _expect(alice.post(_messages(room), json={}), 400, "INVALID_ARGUMENT")


def test_add_member_lets_that_user_read_and_post(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        _post(alice, room, "before carol")
    with tenant.user("carol") as carol:
        _expect(carol.get(_messages(room)), 403, "NOT_ROOM_MEMBER")
        with tenant.api() as api:
            reply = api.post(f"/chat/rooms/{room}/members", json={"userId": "carol"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["id"] == room
        assert sorted(reply.json()["members"]) == ["alice", "bob", "carol"]
        listed = carol.get(_messages(room))
        assert listed.status_code == 200, listed.text
        assert _texts(listed.json()) == ["before carol"]
        _post(carol, room, "hi all")
    assert _all_texts(tenant, room) == ["hi all", "before carol"]


def test_add_existing_member_is_idempotent(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.api() as api:
        reply = api.post(f"/chat/rooms/{room}/members", json={"userId": "bob"})
    assert reply.status_code == 200, reply.text
    assert sorted(reply.json()["members"]) == ["alice", "bob"]


def test_remove_member_then_403(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob", "carol")
    with tenant.user("bob") as bob:
        assert bob.get(_messages(room)).status_code == 200
        with tenant.api() as api:
            reply = api.delete(f"/chat/rooms/{room}/members/bob")
        assert reply.status_code == 200, reply.text
        assert sorted(reply.json()["members"]) == ["alice", "carol"]
        _expect(bob.get(_messages(room)), 403, "NOT_ROOM_MEMBER")
        _expect(bob.post(_messages(room), json=_text("still here?")), 403, "NOT_ROOM_MEMBER")
    with tenant.user("alice") as alice:
        assert alice.get(_messages(room)).status_code == 200
    assert _all_texts(tenant, room) == []


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("POST", "/members", {"userId": "mallory"}),
        ("DELETE", "/members/alice", None),
    ],
)
def test_session_token_cannot_manage_members(
    tenant: Tenant, method: str, suffix: str, body: object
) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.request(method, f"/chat/rooms/{room}{suffix}", json=body)
    _expect(reply, 403, "API_KEY_REQUIRED")
    with tenant.user("alice") as alice:
        assert alice.get(_messages(room)).status_code == 200
    with tenant.user("mallory") as mallory:
        _expect(mallory.get(_messages(room)), 403, "NOT_ROOM_MEMBER")


@pytest.mark.parametrize("user_id", ["", "a b", "x" * 129])
def test_add_member_with_invalid_user_id_is_400(tenant: Tenant, user_id: str) -> None:
    room = tenant.room("alice", "bob")
    with tenant.api() as api:
        reply = api.post(f"/chat/rooms/{room}/members", json={"userId": user_id})
    _expect(reply, 400, "INVALID_ARGUMENT")


# --- paging --------------------------------------------------------------------------


def test_paging_newest_first(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        for i in range(7):
            _post(alice, room, f"m{i}")
    pages: list[list[str]] = []
    tokens: list[str] = []
    token = ""
    with tenant.user("bob") as bob:
        for _ in range(4):
            params: dict[str, str | int] = {"pageSize": 3}
            if token:
                params["pageToken"] = token
            reply = bob.get(_messages(room), params=params)
            assert reply.status_code == 200, reply.text
            pages.append(_texts(reply.json()))
            token = reply.json()["nextPageToken"]
            tokens.append(token)
            if not token:
                break
    assert pages == [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"]]
    assert tokens[0] and tokens[1] and tokens[0] != tokens[1]
    assert tokens[2] == ""


def test_exact_page_has_no_next_token(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        for i in range(3):
            _post(alice, room, f"m{i}")
        reply = alice.get(_messages(room), params={"pageSize": 3})
    assert reply.status_code == 200, reply.text
    assert _texts(reply.json()) == ["m2", "m1", "m0"]
    assert reply.json()["nextPageToken"] == ""


def test_default_page_size_is_50(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        for i in range(51):
            _post(alice, room, f"m{i}")
        reply = alice.get(_messages(room))
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["messages"]) == 50
    assert reply.json()["nextPageToken"] != ""


@pytest.mark.parametrize("page_size", [-1, 101])
def test_page_size_out_of_range_is_400(tenant: Tenant, page_size: int) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.get(_messages(room), params={"pageSize": page_size})
    _expect(reply, 400, "INVALID_ARGUMENT")


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "token", ["!!!", "garbage", "abc", _b64("x12"), _b64("sabc"), _b64("s"), _b64("12")]
)
def test_garbage_page_token_is_400(tenant: Tenant, token: str) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.get(_messages(room), params={"pageToken": token})
    _expect(reply, 400, "INVALID_ARGUMENT")


def test_page_token_with_out_of_range_cursor_is_400(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        reply = alice.get(_messages(room), params={"pageToken": _b64("s" + "9" * 30)})
    _expect(reply, 400, "INVALID_ARGUMENT")


def test_unknown_query_parameter_is_400(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.user("alice") as alice:
        assert alice.get(_messages(room), params={"pageSize": 5}).status_code == 200
        reply = alice.get(_messages(room), params={"pageSize": 5, "sort": "asc"})
    _expect(reply, 400, "MALFORMED_REQUEST")


# --- room ids ----------------------------------------------------------------------


@pytest.mark.parametrize("room_id", ["xyz", "rm_123", "RM_" + "0" * 32, "rm_" + "g" * 32])
def test_bad_room_id_format_is_400(tenant: Tenant, room_id: str) -> None:
    with tenant.user("alice") as alice:
        _expect(alice.get(_messages(room_id)), 400, "INVALID_ARGUMENT")
        _expect(alice.post(_messages(room_id), json=_text("hi")), 400, "INVALID_ARGUMENT")
    with tenant.api() as api:
        _expect(api.get(_messages(room_id)), 400, "INVALID_ARGUMENT")
        reply = api.post(f"/chat/rooms/{room_id}/members", json={"userId": "bob"})
        _expect(reply, 400, "INVALID_ARGUMENT")
        _expect(api.delete(f"/chat/rooms/{room_id}/members/bob"), 400, "INVALID_ARGUMENT")


def test_room_id_with_trailing_newline_is_400(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.api() as api:
        reply = api.get(f"/chat/rooms/{room}%0A/messages")
    _expect(reply, 400, "INVALID_ARGUMENT")


def test_unknown_room_is_404(tenant: Tenant) -> None:
    with tenant.user("alice") as alice:
        _expect(alice.get(_messages(UNKNOWN_ROOM)), 404, "ROOM_NOT_FOUND")
        _expect(alice.post(_messages(UNKNOWN_ROOM), json=_text("hi")), 404, "ROOM_NOT_FOUND")
    with tenant.api() as api:
        _expect(api.get(_messages(UNKNOWN_ROOM)), 404, "ROOM_NOT_FOUND")
        reply = api.post(f"/chat/rooms/{UNKNOWN_ROOM}/members", json={"userId": "bob"})
        _expect(reply, 404, "ROOM_NOT_FOUND")
        _expect(api.delete(f"/chat/rooms/{UNKNOWN_ROOM}/members/bob"), 404, "ROOM_NOT_FOUND")


# --- tenant isolation ------------------------------------------------------------------


def test_other_tenant_cannot_reach_a_room(new_tenant: Callable[..., Tenant]) -> None:
    a, b = new_tenant(), new_tenant()
    room = a.room("alice", "bob")
    with a.user("alice") as alice:
        _post(alice, room, "tenant A only")

    with b.api() as api_b:
        _expect(api_b.get(_messages(room)), 404, "ROOM_NOT_FOUND")
        reply = api_b.post(f"/chat/rooms/{room}/members", json={"userId": "mallory"})
        _expect(reply, 404, "ROOM_NOT_FOUND")
        _expect(api_b.delete(f"/chat/rooms/{room}/members/bob"), 404, "ROOM_NOT_FOUND")
    # a user of tenant B with the same id as a member of A's room gets nothing either
    with b.user("alice") as alice_b:
        _expect(alice_b.get(_messages(room)), 404, "ROOM_NOT_FOUND")
        _expect(alice_b.post(_messages(room), json=_text("intruder")), 404, "ROOM_NOT_FOUND")

    assert _all_texts(a, room) == ["tenant A only"]
    with a.user("bob") as bob:
        assert bob.get(_messages(room)).status_code == 200
    with a.user("mallory") as mallory:
        _expect(mallory.get(_messages(room)), 403, "NOT_ROOM_MEMBER")
