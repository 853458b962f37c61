"""The JSON request guard reads a path exactly as the gRPC-JSON transcoder does, so no
spelling of a route reaches a service with a body the guard did not check (issue 25,
item 3: `POST /v1/sessions/` with `{"userId":"alice","userId":"mallory"}` minted a
session for mallory). Spellings the transcoder would take as a route are checked as
that route; spellings no client produces are refused outright.

Requests go out with http.client, which sends the path byte for byte (httpx would
resolve dot segments before sending)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass

import pytest

from tests.conftest import Tenant, create_tenant
from tests.stack import Stack

DUPLICATE = b'{"userId":"alice","userId":"mallory"}'


@dataclass
class Reply:
    status: int
    body: dict[str, object]

    def reason(self) -> str:
        details = self.body.get("details")
        assert isinstance(details, list), self.body
        infos = [d for d in details if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert len(infos) == 1, self.body
        return str(infos[0]["reason"])

    def violations(self) -> list[tuple[str, str]]:
        details = self.body.get("details")
        assert isinstance(details, list), self.body
        found = [d for d in details if d["@type"].endswith("google.rpc.BadRequest")]
        return [(v["field"], v["description"]) for b in found for v in b["fieldViolations"]]


def send(tenant: Tenant, method: str, path: str, body: bytes, credential: str = "") -> Reply:
    host, port = tenant.rest.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.putheader("Authorization", f"Bearer {credential or tenant.api_key}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return Reply(response.status, json.loads(raw) if raw else {})


@pytest.fixture(scope="module")
def tenant(stack: Stack) -> Tenant:
    """One tenant for the module: nothing here changes a tenant's state."""
    return create_tenant(stack)


# --- spellings the transcoder takes as the route: the body is checked as the route's ---


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions/",  # the reported bypass
        "/v1/sessions//",  # the transcoder drops every trailing slash
        "/v1/sessions/?",  # and the query
        "/v1/sessions/?a=b",
    ],
)
def test_trailing_slashes_are_the_route_and_its_body_is_checked(tenant: Tenant, path: str) -> None:
    reply = send(tenant, "POST", path, DUPLICATE)
    assert reply.status == 400, reply
    assert reply.reason() == "MALFORMED_REQUEST"
    assert reply.violations() == [("userId", "duplicate field")]
    assert "token" not in reply.body


def test_a_trailing_slash_with_a_good_body_works_as_the_transcoder_allows(tenant: Tenant) -> None:
    reply = send(tenant, "POST", "/v1/sessions/", b'{"userId":"alice"}')
    assert reply.status == 200, reply
    assert reply.body["token"]


def test_a_percent_encoded_variable_is_checked_as_its_route(tenant: Tenant) -> None:
    """An escaped reserved character (a@b) is how clients spell such a user id."""
    room = tenant.room("alice", "bob")
    path = f"/chat/rooms/{room}/calls/call_{'0' * 32}/participants/a%40b/remove"
    reply = send(tenant, "POST", path, b'{"callId":"x","callId":"y"}')
    assert reply.status == 400, reply
    assert reply.violations() == [("callId", "duplicate field")]


def test_a_double_slash_that_a_variable_would_take_is_refused(tenant: Tenant) -> None:
    """The transcoder reads /chat/rooms//members as room "" (a variable takes the empty
    segment): the guard reads it the same way, and refuses such a path outright."""
    reply = send(tenant, "POST", "/chat/rooms//members", DUPLICATE)
    assert reply.status == 400, reply
    assert reply.reason() == "MALFORMED_REQUEST"  # the guard's, not the service's


# --- spellings no client produces: refused, never passed on ----------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/./sessions",
        "/v1/x/../sessions",
        "/v1/sessions/.",
        "/v1/sessions/./",
        "//v1/sessions",
        "/v1//sessions",
        "/v1/%73essions",  # an escaped unreserved character
        "/v1/session%53",
        "/v1/sessions%2F",  # an escaped separator
        "/v1/sessions%2f",
        "/v1/sessions%5C",
        "/v1\\sessions",
        "/v1/sessions%zz",  # a malformed escape
    ],
)
def test_unknown_spellings_are_refused(tenant: Tenant, path: str) -> None:
    for body in (b'{"userId":"alice"}', DUPLICATE):
        reply = send(tenant, "POST", path, body)
        assert reply.status == 400, (path, reply)
        assert reply.reason() == "MALFORMED_REQUEST"
        assert "token" not in reply.body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/V1/sessions"),  # the transcoder matches case-sensitively
        ("post", "/v1/sessions"),
        ("POST", "/v1/sessions:mint"),  # no custom verbs are registered
        ("POST", "/v1/sessions;x"),
    ],
)
def test_spellings_the_transcoder_does_not_route_reach_nothing(
    tenant: Tenant, method: str, path: str
) -> None:
    reply = send(tenant, method, path, DUPLICATE)
    assert reply.status in (400, 404), (path, reply)
    assert "token" not in reply.body


def test_the_canonical_path_still_works(tenant: Tenant) -> None:
    assert send(tenant, "POST", "/v1/sessions", b'{"userId":"alice"}').status == 200
    reply = send(tenant, "POST", "/v1/sessions", DUPLICATE)
    assert (reply.status, reply.violations()) == (400, [("userId", "duplicate field")])
