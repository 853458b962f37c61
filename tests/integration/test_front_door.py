"""Envoy's front-door limits, through the real Envoy as a hostile client meets them:
oversize bodies and headers, slow clients, connection limits, ambiguous JSON, and
error bodies that never echo the request."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack import envoy
from devstack.procs import Proc, free_port, http_ok, python_env, wait_until
from tests.conftest import Tenant, error_reason
from tests.integration.realtime import Device
from tests.stack import Stack

MIB = 1 << 20
# Envoy's bounds (envoy/envoy.yaml.tmpl) plus its 1 s delayed close and slack for a
# shared machine.
HEADERS_BOUND = 5 + 3
REQUEST_BOUND = 10 + 3


def _oversize_json() -> bytes:
    return json.dumps({"userId": "alice", "name": "x" * (2 * MIB)}).encode()


def _routes(tenant: Tenant, room: str) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, headers): one route of every family Envoy serves."""
    key = {"Authorization": f"Bearer {tenant.api_key}"}
    user = {"Authorization": f"Bearer {tenant.session_token('alice')}"}
    return [
        ("POST", "/v1/sessions", key),
        ("PATCH", "/v1/tenant/settings", key),
        ("PUT", "/v1/tenant/webhook", key),
        ("POST", "/chat/rooms", key),
        ("POST", f"/chat/rooms/{room}/messages", user),
        ("POST", f"/chat/rooms/{room}/calls", user),
        ("POST", f"/chat/rooms/{room}/calls/cl_x/end", user),
        ("POST", "/livekit/webhook", {}),
        ("POST", "/sendsar.tenant.v1.TenantService/CreateSession", key),
        ("POST", "/socket.io/?EIO=4&transport=polling", {}),
        ("POST", "/no/such/route", {}),
    ]


def test_a_2_mib_body_gets_413_on_every_route(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    body = _oversize_json()
    with httpx.Client(base_url=tenant.rest, timeout=20) as client:
        for method, path, headers in _routes(tenant, room):
            reply = client.request(
                method, path, content=body, headers={**headers, "Content-Type": "application/json"}
            )
            assert reply.status_code == 413, (path, reply.text)
            assert error_reason(reply) == "PAYLOAD_TOO_LARGE", path
            assert reply.json()["message"] == "The request body is larger than 1 MiB."
    with tenant.api() as api:
        assert api.get("/v1/tenant/webhook").status_code == 404  # the PUT changed nothing


def test_a_body_just_under_the_limit_reaches_the_service(tenant: Tenant) -> None:
    """The gRPC servers accept more than Envoy lets through: the service answers."""
    with httpx.Client(base_url=tenant.rest, timeout=20) as client:
        reply = client.post("/livekit/webhook", content=b"{" + b" " * (MIB - 2) + b"}")
    assert reply.status_code == 401, reply.text  # the signature check, not a size limit
    assert error_reason(reply) == "UNAUTHENTICATED"
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "alice", "name": "x" * (MIB - 100)})
    assert reply.status_code == 400, reply.text  # the service's own check of the name
    assert _field_violations(reply) == [("name", "must be at most 8192 characters")]


def test_oversize_headers_get_431_and_large_ones_reach_the_service(tenant: Tenant) -> None:
    def bearer(size: int) -> dict[str, str]:
        return {"Authorization": "Bearer " + "a" * size}

    with httpx.Client(base_url=tenant.rest, timeout=20) as client:
        huge = client.get("/v1/tenant/settings", headers=bearer(30000))
        large = client.get("/v1/tenant/settings", headers=bearer(12000))
    assert huge.status_code == 431, huge.text
    assert error_reason(huge) == "HEADERS_TOO_LARGE"
    assert large.status_code == 401, large.text  # the service looked at it: not a size limit
    assert error_reason(large) == "UNAUTHENTICATED"


def _send_and_wait(port: int, data: bytes, within: float) -> tuple[float, bytes]:
    """Sends `data`, then reads until Envoy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        sock.sendall(data)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return time.monotonic() - started, received


def _body_of(raw: bytes) -> dict[str, object]:
    return dict(json.loads(raw.split(b"\r\n\r\n", 1)[1]))


@pytest.mark.slow
def test_a_stalled_body_gets_408_and_the_connection_closed(stack: Stack) -> None:
    """Declares 100 bytes, sends 10: cut at the request timeout, not held for minutes."""
    request = (
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"userId":'
    )
    elapsed, raw = _send_and_wait(stack.envoy_port, request, REQUEST_BOUND)
    assert raw.startswith(b"HTTP/1.1 408 "), raw
    assert b"connection: close" in raw.lower()
    assert _body_of(raw)["details"][0]["reason"] == "REQUEST_TIMEOUT"  # type: ignore[index]
    assert elapsed < REQUEST_BOUND


@pytest.mark.slow
def test_stalled_headers_get_408_and_the_connection_closed(stack: Stack) -> None:
    elapsed, raw = _send_and_wait(
        stack.envoy_port, b"GET /v1/tenant/settings HTTP/1.1\r\nHost: x\r\nAuthoriz", HEADERS_BOUND
    )
    assert raw.startswith(b"HTTP/1.1 408 "), raw
    assert elapsed < HEADERS_BOUND


@pytest.mark.slow
async def test_a_websocket_outlives_the_rest_timeouts(stack: Stack, tenant: Tenant) -> None:
    """The Socket.IO route keeps its long idle timeout: past the request timeout and
    the REST stream idle timeout the socket still delivers events."""
    room = await asyncio.to_thread(tenant.room, "alice", "bob")
    token = await asyncio.to_thread(tenant.session_token, "bob")
    bob = await Device("bob").connect(stack.rest, token)
    try:
        await asyncio.sleep(22)  # > request_timeout (10 s) and stream_idle_timeout (20 s)
        assert bob.sio.connected
        alice = await asyncio.to_thread(tenant.user, "alice")
        reply = await asyncio.to_thread(alice.post, f"/chat/rooms/{room}/calls", json={})
        assert reply.status_code == 200, reply.text
        await bob.wait_for("call.invite", reply.json()["call"]["id"])
    finally:
        await bob.close()


@pytest.fixture
def small_envoy(tmp_path: Path) -> Iterator[int]:
    """A second Envoy from the same template, allowed three connections in all."""
    port, admin = free_port(), free_port()
    dead = [f"127.0.0.1:{free_port()}"]
    config = tmp_path / "envoy.yaml"
    config.write_text(
        envoy.render(
            envoy.Upstreams(dead, dead, dead, dead),
            listen_port=port,
            admin_port=admin,
            max_connections=3,
        )
    )
    proc = Proc("envoy-small", envoy.command(config), python_env({}), tmp_path)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), "envoy", proc=proc)
        yield port
    finally:
        proc.stop()


def _status_on(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /no/such/route HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(65536).split(b"\r\n", 1)[0]


def test_connections_over_the_global_limit_are_refused(small_envoy: int) -> None:
    held = [socket.create_connection(("127.0.0.1", small_envoy), timeout=5) for _ in range(3)]
    try:
        assert [_status_on(s) for s in held] == [b"HTTP/1.1 404 Not Found"] * 3
        with socket.create_connection(("127.0.0.1", small_envoy), timeout=5) as extra:
            try:
                answer = _status_on(extra)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # closed without an answer
        held.pop().close()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", small_envoy), timeout=5) as again:
            assert _status_on(again) == b"HTTP/1.1 404 Not Found"
    finally:
        for sock in held:
            sock.close()


# --- ambiguous JSON ---------------------------------------------------------------


def _field_violations(reply: httpx.Response) -> list[tuple[str, str]]:
    details = reply.json()["details"]
    found = [d for d in details if d["@type"].endswith("google.rpc.BadRequest")]
    assert len(found) == 1, reply.text
    return [(v["field"], v["description"]) for v in found[0]["fieldViolations"]]


@pytest.mark.parametrize(
    "body",
    [
        b'{"userId":"alice","userId":"mallory"}',
        b'{"userId":"alice","user\\u0049d":"mallory"}',  # the same key, escaped
        b'{"userId":"alice","user_id":"mallory"}',  # the proto name of the same field
        b'{"user_id":"alice","userId":"mallory","name":"x"}',
    ],
)
def test_a_duplicate_key_gets_400_and_mints_nothing(tenant: Tenant, body: bytes) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == "MALFORMED_REQUEST"
    assert _field_violations(reply) == [("userId", "duplicate field")]
    assert "token" not in reply.json()


def test_a_duplicate_nested_key_gets_400_and_changes_nothing(tenant: Tenant) -> None:
    with tenant.api() as api:
        before = api.get("/v1/tenant/settings").json()
        reply = api.patch(
            "/v1/tenant/settings",
            content=b'{"calls":{"maxParticipants":3,"maxParticipants":50}}',
        )
        assert reply.status_code == 400, reply.text
        assert _field_violations(reply) == [("calls.maxParticipants", "duplicate field")]
        assert api.get("/v1/tenant/settings").json() == before


def test_an_unknown_field_gets_400_naming_it_and_changes_nothing(tenant: Tenant) -> None:
    with tenant.api() as api:
        before = api.get("/v1/tenant/settings").json()
        reply = api.patch("/v1/tenant/settings", json={"calls": {"maxParticipant": 3}})
        assert reply.status_code == 400, reply.text
        assert error_reason(reply) == "MALFORMED_REQUEST"
        assert _field_violations(reply) == [("calls.maxParticipant", "unknown field")]
        assert api.get("/v1/tenant/settings").json() == before
        # The proto name of a known field is still accepted, as protobuf JSON allows.
        reply = api.patch("/v1/tenant/settings", json={"calls": {"max_participants": 3}})
        assert reply.status_code == 200, reply.text
        assert reply.json()["calls"]["maxParticipants"] == 3


def test_the_grpc_path_is_guarded_too(tenant: Tenant) -> None:
    """The transcoder also takes JSON at /<service>/<method>: no way around the guard."""
    with tenant.api() as api:
        reply = api.post(
            "/sendsar.tenant.v1.TenantService/CreateSession",
            content=b'{"userId":"alice","userId":"mallory"}',
            headers={"Content-Type": "application/json"},
        )
    assert reply.status_code == 400, reply.text
    assert _field_violations(reply) == [("userId", "duplicate field")]


def test_valid_bodies_pass_the_guard(tenant: Tenant) -> None:
    with tenant.api() as api:
        created = api.post(
            "/chat/rooms",
            content=b' {"members" : ["alice", "bob"], "name": "caf\\u00e9 \\ud83d\\ude00"} ',
        )
        assert created.status_code == 200, created.text
        assert created.json()["name"] == "café 😀"
    alice = tenant.user("alice")
    room = created.json()["id"]
    started = alice.post(f"/chat/rooms/{room}/calls")  # no body at all
    assert started.status_code == 200, started.text
    call = started.json()["call"]["id"]
    ended = alice.post(f"/chat/rooms/{room}/calls/{call}/end", json={"reason": "cancelled"})
    assert ended.status_code == 200, ended.text


# --- error bodies never echo the request -----------------------------------------

_TYPE_NAME = re.compile(r"sendsar\.\w+\.v\d|google\.protobuf|TYPE_[A-Z]")


def _hostile_requests(tenant: Tenant, room: str) -> list[tuple[str, str, bytes]]:
    return [
        ("POST", "/v1/sessions", b'{"userId":"al\x00\x01\x1b[31mice"}'),
        ("POST", "/v1/sessions", b'{"userId":"alice"\x00\x07}'),
        ("POST", "/v1/sessions", b'{"userId":5}'),
        ("POST", "/v1/sessions", b"[1]"),
        ("POST", "/v1/sessions", b'{"userId":"a"} trailing\x00'),
        ("POST", "/v1/sessions", b'{"\x01\x02":1}'),
        ("POST", "/v1/sessions", b"{" * 100 + b"}" * 100),
        ("PATCH", "/v1/tenant/settings", b'{"calls":{"maxParticipants":"\x00"}}'),
        ("GET", f"/chat/rooms/{room}/messages?bogus=%00%01", b""),
        ("GET", f"/chat/rooms/{room}/messages?pageSize=abc%1b", b""),
        ("POST", "/chat/rooms/%00%01/members", b'{"userId":"x"}'),
        ("POST", "/sendsar.chat.v1.ChatService/NoSuchMethod", b"{}"),
        ("POST", "/%7F%00/", b""),
    ]


def test_error_bodies_hold_no_control_bytes_and_no_type_names(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    with tenant.api() as api:
        for method, path, body in _hostile_requests(tenant, room):
            reply = api.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
            assert 400 <= reply.status_code < 500, (path, body, reply.status_code)
            text = reply.content.decode().removesuffix("\n")  # Envoy's own
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text), (body, text)
            assert not _TYPE_NAME.search(text), (body, text)
            assert "\\u00" not in text, (body, text)  # no escaped control bytes either
            error_reason(reply)  # the usual {code, message, details[ErrorInfo]}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/tenant/\x01\x00settings HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/tenant/settings HTTP/1.1\r\nHost: x\r\nX-A\x01: b\x00\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: zz\x1b\r\n\r\n",
    ],
)
def test_requests_envoy_cannot_parse_get_the_usual_error_body(
    stack: Stack, request_bytes: bytes
) -> None:
    _, raw = _send_and_wait(stack.envoy_port, request_bytes, 10)
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    body = raw.split(b"\r\n\r\n", 1)[1].removesuffix(b"\n")
    assert not any(byte < 0x20 or byte == 0x7F for byte in body), body
    assert json.loads(body)["details"][0]["reason"] == "MALFORMED_REQUEST"
