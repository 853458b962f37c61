"""CORS through the real Envoy: preflights for every REST endpoint family, CORS headers on
successes and on every kind of error (service errors, transcoder errors, Envoy's own
replies), a restricted CORS_ALLOWED_ORIGINS, and the Socket.IO path honouring it too."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import socketio

from devstack import envoy
from devstack.procs import Proc, free_port, http_ok, python_env, wait_until
from services.common.settings import parse_cors_origins
from tests.conftest import Tenant, error_reason
from tests.stack import Stack

APP = "https://app.example.com"  # an origin other than the API's
OTHER = "https://evil.example.net"
ROOM = "rm_" + "0" * 32  # well-formed, never issued
CALL = "cl_" + "0" * 32
REQUEST_HEADERS = ("authorization", "content-type", "x-request-id")

# One (method, path) per REST route, grouped by endpoint family.
ENDPOINTS = {
    "sessions": [("POST", "/v1/sessions")],
    "tenant-settings": [("GET", "/v1/tenant/settings"), ("PATCH", "/v1/tenant/settings")],
    "tenant-webhook": [
        ("PUT", "/v1/tenant/webhook"),
        ("GET", "/v1/tenant/webhook"),
        ("DELETE", "/v1/tenant/webhook"),
    ],
    "chat-rooms": [
        ("POST", "/chat/rooms"),
        ("POST", f"/chat/rooms/{ROOM}/members"),
        ("DELETE", f"/chat/rooms/{ROOM}/members/bob"),
    ],
    "chat-messages": [
        ("GET", f"/chat/rooms/{ROOM}/messages"),
        ("POST", f"/chat/rooms/{ROOM}/messages"),
    ],
    "calls": [
        ("GET", f"/chat/rooms/{ROOM}/calls/active"),
        ("POST", f"/chat/rooms/{ROOM}/calls"),
        *[
            ("POST", f"/chat/rooms/{ROOM}/calls/{CALL}/{action}")
            for action in ("accept", "decline", "end", "leave", "token")
        ],
    ],
    "livekit-webhook": [("POST", "/livekit/webhook")],
}


def preflight(base: str, method: str, path: str, origin: str = APP) -> httpx.Response:
    return httpx.options(
        base + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": ",".join(REQUEST_HEADERS),
        },
        timeout=10,
    )


def listed(header: str | None) -> set[str]:
    return {v.strip().lower() for v in (header or "").split(",") if v.strip()}


def assert_cors(reply: httpx.Response, origin: str = APP) -> None:
    """What a browser needs to hand the response (and its x-request-id) to the page."""
    assert reply.headers.get("access-control-allow-origin") == origin, dict(reply.headers)
    assert "x-request-id" in listed(reply.headers.get("access-control-expose-headers"))
    assert reply.headers.get("x-request-id")
    assert "access-control-allow-credentials" not in reply.headers  # bearer tokens only


@pytest.mark.parametrize("family", sorted(ENDPOINTS))
def test_preflight_is_answered_for_every_route_of_the_family(stack: Stack, family: str) -> None:
    for method, path in ENDPOINTS[family]:
        reply = preflight(stack.rest, method, path)
        assert reply.status_code in (200, 204), (method, path, reply.status_code, reply.text)
        assert reply.headers.get("access-control-allow-origin") == APP, (method, path)
        methods = listed(reply.headers.get("access-control-allow-methods"))
        assert {"get", "post", "put", "patch", "delete"} <= methods, (method, path, methods)
        headers = listed(reply.headers.get("access-control-allow-headers"))
        assert set(REQUEST_HEADERS) <= headers, (method, path, headers)
        assert int(reply.headers["access-control-max-age"]) > 0


def test_successful_responses_carry_cors_headers(tenant: Tenant) -> None:
    token = tenant.session_token("alice")
    reply = httpx.get(
        f"{tenant.rest}/v1/tenant/settings",
        headers={"Authorization": f"Bearer {token}", "Origin": APP},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    assert_cors(reply)
    created = httpx.post(
        f"{tenant.rest}/v1/sessions",
        headers={"Authorization": f"Bearer {tenant.api_key}", "Origin": APP},
        json={"userId": "bob"},
        timeout=10,
    )
    assert created.status_code == 200, created.text
    assert_cors(created)


def test_errors_carry_cors_headers_and_a_readable_body(tenant: Tenant) -> None:
    token = tenant.session_token("alice")
    room = tenant.room("alice", "bob")
    session = {"Authorization": f"Bearer {token}", "Origin": APP}
    with httpx.Client(base_url=tenant.rest, timeout=10) as client:
        cases = [
            # 401 from the service: no credentials
            (client.get(f"/chat/rooms/{room}/calls/active", headers={"Origin": APP}), 401),
            # 403 from the service: a session token on an API-key endpoint
            (client.patch("/v1/tenant/settings", headers=session, json={"calls": {}}), 403),
            # 404 from the service
            (client.get(f"/chat/rooms/{ROOM}/calls/active", headers=session), 404),
            # 400 from the transcoder: the body is not JSON
            (
                client.post(
                    f"/chat/rooms/{room}/calls",
                    headers={**session, "Content-Type": "application/json"},
                    content=b"{not json",
                ),
                400,
            ),
            # 404 from Envoy itself: no such path
            (client.get("/no/such/path", headers=session), 404),
        ]
    for reply, status in cases:
        assert reply.status_code == status, (status, reply.text)
        assert_cors(reply)
        assert error_reason(reply)  # the JSON error body, readable by the page


def test_unknown_path_keeps_the_error_shape(stack: Stack) -> None:
    reply = httpx.post(f"{stack.rest}/v2/nothing", json={}, timeout=10)
    assert reply.status_code == 404, reply.text
    assert error_reason(reply) == "NOT_FOUND"


def test_requests_without_origin_get_no_cors_headers(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.get("/v1/tenant/settings")
    assert reply.status_code == 200
    assert "access-control-allow-origin" not in reply.headers


def test_socketio_polling_has_exactly_one_set_of_cors_headers(stack: Stack) -> None:
    """The bridge answers CORS on /socket.io/ itself; Envoy must not add a second
    Access-Control-Allow-Origin (browsers refuse a response with two)."""
    reply = httpx.get(
        f"{stack.rest}/socket.io/?EIO=4&transport=polling", headers={"Origin": APP}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers.get_list("access-control-allow-origin") == [APP]


# --- a restricted CORS_ALLOWED_ORIGINS -------------------------------------------------


@pytest.fixture(scope="module")
def strict_envoy(stack: Stack) -> Iterator[str]:
    """A second Envoy in front of the same services, allowing one origin and one
    request per second (so a 429 is easy to get)."""
    port, admin = free_port(), free_port()
    config = stack.workdir / "envoy-strict.yaml"
    config.write_text(
        envoy.render(
            stack.upstreams(),
            listen_port=port,
            admin_port=admin,
            rate_limit_per_second=1,
            cors_allowed_origins=f"{APP}, http://localhost:3000",
        )
    )
    proc = Proc("envoy-strict", envoy.command(config), python_env({}), stack.workdir)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), "envoy-strict", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_restricted_origins_allow_only_those(strict_envoy: str) -> None:
    path = f"/chat/rooms/{ROOM}/calls"
    allowed = preflight(strict_envoy, "POST", path)
    assert allowed.status_code in (200, 204)
    assert allowed.headers.get("access-control-allow-origin") == APP
    assert preflight(strict_envoy, "POST", path, "http://localhost:3000").headers.get(
        "access-control-allow-origin"
    ) == ("http://localhost:3000")

    refused = preflight(strict_envoy, "POST", path, OTHER)
    assert "access-control-allow-origin" not in refused.headers  # the browser stops here
    actual = httpx.get(f"{strict_envoy}/v1/tenant/settings", headers={"Origin": OTHER}, timeout=10)
    assert actual.status_code == 401  # the request itself is untouched...
    assert "access-control-allow-origin" not in actual.headers  # ...but unreadable to OTHER


def test_rate_limited_replies_carry_cors_headers(strict_envoy: str) -> None:
    """Preflights are answered before the rate limit; a 429 from Envoy carries CORS."""
    for _ in range(10):
        assert preflight(strict_envoy, "GET", "/v1/tenant/settings").status_code in (200, 204)
    replies = [
        httpx.get(f"{strict_envoy}/v1/tenant/settings", headers={"Origin": APP}, timeout=10)
        for _ in range(6)
    ]
    limited = [r for r in replies if r.status_code == 429]
    assert limited, [r.status_code for r in replies]
    for reply in limited:
        assert_cors(reply)
        assert error_reason(reply) == "RATE_LIMITED"


@pytest.fixture(scope="module")
def strict_bridge(stack: Stack) -> Iterator[str]:
    """A second socket bridge with the same restricted CORS_ALLOWED_ORIGINS."""
    port = free_port()
    proc = stack.start_worker(
        "bridge-strict",
        "services.socket_bridge",
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
        HTTP_PORT=str(port),
        CORS_ALLOWED_ORIGINS=APP,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        stack.procs.pop("bridge-strict", None)


async def _connect(url: str, token: str, origin: str) -> bool:
    client = socketio.AsyncClient(reconnection=False)
    try:
        await client.connect(
            url,
            auth={"token": token},
            headers={"Origin": origin},
            transports=["websocket"],
            wait_timeout=10,
        )
        return bool(client.connected)
    except socketio.exceptions.ConnectionError:
        return False
    finally:
        await client.shutdown()
        if client.eio.http is not None:  # the refused handshake leaves its HTTP session open
            await client.eio.http.close()


async def test_socketio_honours_the_allowed_origins(strict_bridge: str, tenant: Tenant) -> None:
    token = tenant.session_token("alice")
    assert await _connect(strict_bridge, token, APP)
    assert not await _connect(strict_bridge, token, OTHER)


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("*", ["*"]),
        (" * ", ["*"]),
        ("https://app.example.com", ["https://app.example.com"]),
        (
            "https://a.example.com/, http://localhost:3000",
            ["https://a.example.com", "http://localhost:3000"],
        ),
    ],
)
def test_parse_cors_origins(value: str, origins: list[str]) -> None:
    assert parse_cors_origins(value) == origins


@pytest.mark.parametrize(
    "value",
    ["", " , ", "app.example.com", "https://a.example.com/path", "*, https://a.example.com"],
)
def test_bad_cors_origins_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="CORS_ALLOWED_ORIGINS"):
        parse_cors_origins(value)
