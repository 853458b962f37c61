"""Forged and misused credentials on every endpoint family, through Envoy: expired, wrong
signature, `alg: none`, HS/RS confusion, a revoked key, another tenant's credentials,
a session where a key is needed and the reverse. Each is refused, and the victim
tenant's state is unchanged afterwards."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest

from services.common.settings import DEV_SESSION_KEY
from tests.conftest import Tenant, create_tenant, error_reason
from tests.stack import Stack

# The HS512 forgery uses the (short) dev key on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key is")


@dataclass(frozen=True)
class Family:
    method: str
    path: str  # {room} is the victim's room
    body: dict[str, object] | None
    needs: str  # "key", "session" or "any"


FAMILIES = {
    "sessions": Family("POST", "/v1/sessions", {"userId": "mallory"}, "key"),
    "settings-read": Family("GET", "/v1/tenant/settings", None, "any"),
    "settings-write": Family("PATCH", "/v1/tenant/settings", {"calls": {"enabled": False}}, "key"),
    "webhook": Family("PUT", "/v1/tenant/webhook", {"url": "http://127.0.0.1:9/x"}, "key"),
    "api-keys": Family("POST", "/v1/tenant/api-keys", {}, "key"),
    "rooms": Family("POST", "/chat/rooms", {"members": ["mallory", "eve"]}, "key"),
    "members": Family("POST", "/chat/rooms/{room}/members", {"userId": "mallory"}, "key"),
    "messages-read": Family("GET", "/chat/rooms/{room}/messages", None, "any"),
    "messages-write": Family(
        "POST", "/chat/rooms/{room}/messages", {"parts": [{"type": "text", "text": "x"}]}, "session"
    ),
    "calls": Family("POST", "/chat/rooms/{room}/calls", {"type": "audio"}, "session"),
    "call-state": Family("GET", "/chat/rooms/{room}/calls/active", None, "session"),
}
ROOM_FAMILIES = [name for name, f in FAMILIES.items() if "{room}" in f.path]


@dataclass
class World:
    victim: Tenant
    other: Tenant
    room: str
    revoked_key: str


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    victim, other = create_tenant(stack, "victim"), create_tenant(stack, "other")
    room = victim.room("alice", "bob")
    with victim.api() as api:
        extra = api.post("/v1/tenant/api-keys", json={}).json()
        assert api.delete(f"/v1/tenant/api-keys/{extra['apiKey']['id']}").status_code == 200
    time.sleep(0.5)  # revocations reach every replica within a second
    yield World(victim, other, room, extra["key"])
    _assert_victim_unchanged(victim, room)


def _claims(tenant: Tenant, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "sendsar",
        "aud": "sendsar-session",
        "sub": "alice",
        "tid": tenant.tenant_id,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, str], claims: dict[str, object], signature: bytes) -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)]
    )


def _hs256_by_hand(claims: dict[str, object], key: str) -> str:
    """HS256 keyed with a public key's PEM: the classic RS->HS confusion (PyJWT refuses
    to make one, so it is made here)."""
    signing_input = ".".join(
        [
            _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()),
            _b64(json.dumps(claims).encode()),
        ]
    )
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


FAKE_PUBLIC_KEY = (
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
)

FORGERIES: dict[str, Callable[[World], str]] = {
    "expired": lambda w: jwt.encode(
        _claims(w.victim, iat=int(time.time()) - 600, exp=int(time.time()) - 60), DEV_SESSION_KEY
    ),
    "wrong-signature": lambda w: jwt.encode(_claims(w.victim), secrets.token_hex(32)),
    "alg-none": lambda w: _unsigned({"alg": "none", "typ": "JWT"}, _claims(w.victim), b""),
    "rs256-header": lambda w: _unsigned(
        {"alg": "RS256", "typ": "JWT"}, _claims(w.victim), secrets.token_bytes(256)
    ),
    "hs256-with-a-public-key": lambda w: _hs256_by_hand(_claims(w.victim), FAKE_PUBLIC_KEY),
    "hs512": lambda w: jwt.encode(_claims(w.victim), DEV_SESSION_KEY, algorithm="HS512"),
    "no-tenant-claim": lambda w: jwt.encode(_claims(w.victim, tid=""), DEV_SESSION_KEY),
    "revoked-key": lambda w: w.revoked_key,
    "key-of-nobody": lambda w: "sk_" + secrets.token_hex(8) + "_" + secrets.token_urlsafe(32),
}


def _send(world: World, family: Family, credential: str) -> httpx.Response:
    with httpx.Client(
        base_url=world.victim.rest, headers={"Authorization": f"Bearer {credential}"}, timeout=20
    ) as client:
        return client.request(family.method, family.path.format(room=world.room), json=family.body)


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forged_credentials_are_401(world: World, family: str, forgery: str) -> None:
    reply = _send(world, FAMILIES[family], FORGERIES[forgery](world))
    assert reply.status_code == 401, reply.text
    assert error_reason(reply) == "UNAUTHENTICATED"


@pytest.mark.parametrize("family", ROOM_FAMILIES)
@pytest.mark.parametrize("kind", ["key", "session"])
def test_another_tenants_credentials_find_no_such_room(
    world: World, family: str, kind: str
) -> None:
    credential = world.other.api_key if kind == "key" else world.other.session_token("alice")
    needs = FAMILIES[family].needs
    reply = _send(world, FAMILIES[family], credential)
    if needs not in ("any", kind):
        assert reply.status_code == 403, reply.text  # the wrong kind is refused first
    else:
        assert reply.status_code == 404, reply.text
        assert error_reason(reply) == "ROOM_NOT_FOUND"


@pytest.mark.parametrize("family", sorted(n for n, f in FAMILIES.items() if f.needs != "any"))
def test_the_wrong_kind_of_credential_is_403(world: World, family: str) -> None:
    if FAMILIES[family].needs == "key":
        credential, reason = world.victim.session_token("alice"), "API_KEY_REQUIRED"
    else:
        credential, reason = world.victim.api_key, "SESSION_REQUIRED"
    reply = _send(world, FAMILIES[family], credential)
    assert reply.status_code == 403, reply.text
    assert error_reason(reply) == reason


def _assert_victim_unchanged(victim: Tenant, room: str) -> None:
    with victim.api() as api:
        calls = api.get("/v1/tenant/settings").json()["calls"]
        assert calls["enabled"] is True
        assert api.get("/v1/tenant/webhook").status_code == 404
        assert len(api.get("/v1/tenant/api-keys").json()["apiKeys"]) == 1
        assert api.get(f"/chat/rooms/{room}/messages").json()["messages"] == []
        members = api.post(f"/chat/rooms/{room}/members", json={"userId": "alice"}).json()
        assert members["members"] == ["alice", "bob"]
    with victim.user("alice") as alice:
        assert alice.get(f"/chat/rooms/{room}/calls/active").json() == {}
