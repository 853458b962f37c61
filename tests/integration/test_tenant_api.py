"""TenantService over REST through the real Envoy: auth, settings, sessions, webhook config.

Also tenant isolation of settings and how API keys are stored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import jwt
import psycopg
import pytest

from services.common.auth import mint_session
from services.common.settings import DEV_SESSION_KEY
from tests.conftest import Tenant, error_reason
from tests.stack import Stack

DEFAULTS = {
    "enabled": True,
    "maxParticipants": 8,
    "ringTimeoutSeconds": 45,
    "defaultType": "video",
    "busyPolicy": "ring",
    "guestsEnabled": False,
    "lobby": "host",
}
SETTINGS = "/v1/tenant/settings"
WEBHOOK = "/v1/tenant/webhook"


def _client(tenant: Tenant, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=tenant.rest, headers=headers or {}, timeout=20)


def _bearer(tenant: Tenant, credential: str) -> httpx.Client:
    return _client(tenant, {"Authorization": f"Bearer {credential}"})


def _settings(tenant: Tenant) -> dict[str, object]:
    with tenant.api() as api:
        reply = api.get(SETTINGS)
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["calls"])


def _claims(tenant: Tenant, user_id: str = "alice") -> dict[str, object]:
    """Valid session claims for the tenant (as the service would mint them)."""
    now = int(time.time())
    return {
        "iss": "sendsar",
        "aud": "sendsar-session",
        "sub": user_id,
        "tid": tenant.tenant_id,
        "iat": now,
        "exp": now + 300,
    }


def _assert_unauthenticated(reply: httpx.Response) -> None:
    assert reply.status_code == 401, reply.text
    assert error_reason(reply) == "UNAUTHENTICATED"


# --- auth ----------------------------------------------------------------------


def test_missing_credentials_is_401(tenant: Tenant) -> None:
    with _client(tenant) as anon:
        _assert_unauthenticated(anon.get(SETTINGS))
        _assert_unauthenticated(anon.post("/v1/sessions", json={"userId": "alice"}))


def test_garbage_bearer_is_401(tenant: Tenant) -> None:
    with _bearer(tenant, "garbage") as client:
        _assert_unauthenticated(client.get(SETTINGS))


@pytest.mark.parametrize("scheme", ["Basic", "Token", "ApiKey"])
def test_non_bearer_scheme_is_401_even_with_a_valid_key(tenant: Tenant, scheme: str) -> None:
    with _client(tenant, {"Authorization": f"{scheme} {tenant.api_key}"}) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_bearer_without_credential_is_401(tenant: Tenant) -> None:
    with _client(tenant, {"Authorization": "Bearer"}) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_malformed_authorization_wins_over_a_valid_x_api_key(tenant: Tenant) -> None:
    headers = {"Authorization": "Basic abc", "X-Api-Key": tenant.api_key}
    with _client(tenant, headers) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_token_minted_with_the_dev_key_is_accepted(tenant: Tenant) -> None:
    """Control for the forged-token tests below: the stack signs with the dev key."""
    token, _ = mint_session(
        signing_key=DEV_SESSION_KEY,
        tenant_id=tenant.tenant_id,
        user_id="alice",
        name=None,
        ttl_seconds=300,
    )
    with _bearer(tenant, token) as client:
        reply = client.get(SETTINGS)
    assert reply.status_code == 200, reply.text


def test_expired_session_token_is_401(tenant: Tenant) -> None:
    token, expires_at = mint_session(
        signing_key=DEV_SESSION_KEY,
        tenant_id=tenant.tenant_id,
        user_id="alice",
        name=None,
        ttl_seconds=-10,
    )
    assert expires_at < time.time()
    with _bearer(tenant, token) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_token_signed_with_another_key_is_401(tenant: Tenant) -> None:
    token, _ = mint_session(
        signing_key="another-signing-key-that-is-not-the-stack-one-0000",
        tenant_id=tenant.tenant_id,
        user_id="alice",
        name=None,
        ttl_seconds=300,
    )
    with _bearer(tenant, token) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_unsigned_alg_none_token_is_401(tenant: Tenant) -> None:
    token = jwt.encode(_claims(tenant), None, algorithm="none")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    with _bearer(tenant, token) as client:
        _assert_unauthenticated(client.get(SETTINGS))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_token_with_another_hmac_algorithm_is_401(tenant: Tenant) -> None:
    """The algorithm is pinned to HS256, even with the right key."""
    token = jwt.encode(_claims(tenant), DEV_SESSION_KEY, algorithm="HS512")
    with _bearer(tenant, token) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_well_formed_api_key_with_wrong_secret_is_401(tenant: Tenant) -> None:
    prefix, key_id, _secret = tenant.api_key.split("_", 2)
    forged = f"{prefix}_{key_id}_{'x' * 43}"
    with _bearer(tenant, forged) as client:
        _assert_unauthenticated(client.get(SETTINGS))
    with _client(tenant, {"X-Api-Key": forged}) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_unknown_api_key_id_is_401(tenant: Tenant) -> None:
    _prefix, _key_id, secret = tenant.api_key.split("_", 2)
    with _bearer(tenant, f"sk_{'0' * 16}_{secret}") as client:
        _assert_unauthenticated(client.get(SETTINGS))


@pytest.mark.parametrize("credential", ["sk_", "sk_abc", "sk__secret", "sk_abc_"])
def test_malformed_api_key_is_401(tenant: Tenant, credential: str) -> None:
    with _bearer(tenant, credential) as client:
        _assert_unauthenticated(client.get(SETTINGS))


def test_x_api_key_header_works_like_bearer(tenant: Tenant) -> None:
    with _client(tenant, {"X-Api-Key": tenant.api_key}) as client:
        assert client.get(SETTINGS).json()["calls"] == DEFAULTS
        reply = client.patch(SETTINGS, json={"calls": {"maxParticipants": 4}})
        assert reply.status_code == 200, reply.text
        reply = client.post("/v1/sessions", json={"userId": "alice"})
        assert reply.status_code == 200, reply.text
    assert _settings(tenant)["maxParticipants"] == 4


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/sessions", {"userId": "mallory"}),
        ("PATCH", SETTINGS, {"calls": {"maxParticipants": 3}}),
        ("PUT", WEBHOOK, {"url": "https://example.com/hook"}),
        ("GET", WEBHOOK, None),
        ("DELETE", WEBHOOK, None),
        ("POST", "/chat/rooms", {"members": ["alice", "bob"]}),
    ],
)
def test_session_token_on_api_key_only_endpoint_is_403(
    tenant: Tenant, method: str, path: str, body: object
) -> None:
    with tenant.user("alice") as user:
        reply = user.request(method, path, json=body)
    assert reply.status_code == 403, reply.text
    assert error_reason(reply) == "API_KEY_REQUIRED"


# --- settings --------------------------------------------------------------------


def test_settings_defaults_with_api_key_and_session(tenant: Tenant) -> None:
    assert _settings(tenant) == DEFAULTS
    with tenant.user("alice") as user:
        reply = user.get(SETTINGS)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"calls": DEFAULTS}


def test_partial_patch_changes_only_that_field(tenant: Tenant) -> None:
    merged = tenant.patch_settings(maxParticipants=12)
    assert merged == {**DEFAULTS, "maxParticipants": 12}
    assert _settings(tenant) == merged
    with tenant.user("alice") as user:
        assert user.get(SETTINGS).json()["calls"] == merged


def test_successive_partial_patches_all_survive(tenant: Tenant) -> None:
    tenant.patch_settings(maxParticipants=5)
    tenant.patch_settings(ringTimeoutSeconds=20)
    tenant.patch_settings(defaultType="audio")
    tenant.patch_settings(busyPolicy="reject")
    tenant.patch_settings(guestsEnabled=True)
    tenant.patch_settings(lobby="off")
    last = tenant.patch_settings(enabled=False)
    expected = {
        "enabled": False,
        "maxParticipants": 5,
        "ringTimeoutSeconds": 20,
        "defaultType": "audio",
        "busyPolicy": "reject",
        "guestsEnabled": True,
        "lobby": "off",
    }
    assert last == expected
    assert _settings(tenant) == expected


def test_patch_without_fields_changes_nothing(tenant: Tenant) -> None:
    tenant.patch_settings(ringTimeoutSeconds=30)
    with tenant.api() as api:
        bodies: list[dict[str, object]] = [{}, {"calls": {}}]
        for body in bodies:
            reply = api.patch(SETTINGS, json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["calls"] == {**DEFAULTS, "ringTimeoutSeconds": 30}


@pytest.mark.parametrize(
    ("calls", "expected"),
    [
        ({"maxParticipants": 2}, {"maxParticipants": 2}),
        ({"maxParticipants": 100}, {"maxParticipants": 100}),
        ({"ringTimeoutSeconds": 5}, {"ringTimeoutSeconds": 5}),
        ({"ringTimeoutSeconds": 300}, {"ringTimeoutSeconds": 300}),
        ({"defaultType": "audio"}, {"defaultType": "audio"}),
    ],
)
def test_boundary_values_are_accepted(
    tenant: Tenant, calls: dict[str, object], expected: dict[str, object]
) -> None:
    assert tenant.patch_settings(**calls) == {**DEFAULTS, **expected}


@pytest.mark.parametrize(
    ("calls", "reason"),
    [
        ({"maxParticipants": 0}, "INVALID_ARGUMENT"),
        ({"maxParticipants": 1}, "INVALID_ARGUMENT"),
        ({"maxParticipants": 101}, "INVALID_ARGUMENT"),
        ({"maxParticipants": -5}, "INVALID_ARGUMENT"),
        ({"ringTimeoutSeconds": 1}, "INVALID_ARGUMENT"),
        ({"ringTimeoutSeconds": 301}, "INVALID_ARGUMENT"),
        ({"defaultType": "fax"}, "INVALID_CALL_TYPE"),
        ({"defaultType": ""}, "INVALID_CALL_TYPE"),
        ({"defaultType": "VIDEO"}, "INVALID_CALL_TYPE"),
    ],
)
def test_invalid_setting_is_400_and_changes_nothing(
    tenant: Tenant, calls: dict[str, object], reason: str
) -> None:
    before = tenant.patch_settings(maxParticipants=6, ringTimeoutSeconds=30, defaultType="audio")
    with tenant.api() as api:
        reply = api.patch(SETTINGS, json={"calls": calls})
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == reason
    assert _settings(tenant) == before


@pytest.mark.parametrize(
    ("calls", "reason"),
    [
        ({"maxParticipants": 20, "defaultType": "fax"}, "INVALID_CALL_TYPE"),
        ({"ringTimeoutSeconds": 60, "maxParticipants": 0}, "INVALID_ARGUMENT"),
        ({"enabled": False, "ringTimeoutSeconds": 1}, "INVALID_ARGUMENT"),
    ],
)
def test_patch_mixing_valid_and_invalid_fields_changes_nothing(
    tenant: Tenant, calls: dict[str, object], reason: str
) -> None:
    with tenant.api() as api:
        reply = api.patch(SETTINGS, json={"calls": calls})
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == reason
    assert _settings(tenant) == DEFAULTS


def test_non_integer_setting_is_400(tenant: Tenant) -> None:
    with tenant.api() as api:
        for value in ("abc", 2.5):
            reply = api.patch(SETTINGS, json={"calls": {"maxParticipants": value}})
            assert reply.status_code == 400, reply.text
    assert _settings(tenant) == DEFAULTS


def test_session_token_cannot_patch_settings(tenant: Tenant) -> None:
    with tenant.user("alice") as user:
        reply = user.patch(SETTINGS, json={"calls": {"maxParticipants": 3, "enabled": False}})
    assert reply.status_code == 403, reply.text
    assert error_reason(reply) == "API_KEY_REQUIRED"
    assert _settings(tenant) == DEFAULTS


# --- sessions --------------------------------------------------------------------


def _expires_at(body: dict[str, object]) -> float:
    return datetime.fromisoformat(str(body["expiresAt"])).timestamp()


def test_create_session_returns_a_token_naming_tenant_and_user(tenant: Tenant) -> None:
    with tenant.api() as api:
        started = time.time()
        reply = api.post("/v1/sessions", json={"userId": "alice@example.com"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"token", "expiresAt"}
    token = str(body["token"])
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tid"] == tenant.tenant_id
    assert claims["sub"] == "alice@example.com"
    assert claims["exp"] == int(_expires_at(body))
    # the default lifetime is one hour
    assert started + 3600 - 5 <= _expires_at(body) <= time.time() + 3600 + 5
    with _bearer(tenant, token) as user:
        assert user.get(SETTINGS).status_code == 200


def test_create_session_honours_ttl_and_name(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "bob", "name": "Bob", "ttlSeconds": 120})
    assert reply.status_code == 200, reply.text
    claims = jwt.decode(reply.json()["token"], options={"verify_signature": False})
    assert claims["name"] == "Bob"
    assert abs(_expires_at(reply.json()) - (time.time() + 120)) < 10
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("ttl", [60, 86400])
def test_create_session_ttl_bounds_are_accepted(tenant: Tenant, ttl: int) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "alice", "ttlSeconds": ttl})
    assert reply.status_code == 200, reply.text
    claims = jwt.decode(reply.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == ttl


def test_tokens_of_two_tenants_name_their_own_tenant(new_tenant: Callable[..., Tenant]) -> None:
    a, b = new_tenant(), new_tenant()
    for t in (a, b):
        claims = jwt.decode(t.session_token("alice"), options={"verify_signature": False})
        assert claims["tid"] == t.tenant_id


@pytest.mark.parametrize(
    "body",
    [
        {"userId": ""},
        {"userId": "a b"},
        {"userId": " alice"},
        {"userId": "x" * 200},
        {"userId": "x" * 129},
        {"userId": "bad/slash"},
        {},
    ],
)
def test_create_session_with_invalid_user_id_is_400(tenant: Tenant, body: dict[str, str]) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json=body)
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == "INVALID_ARGUMENT"


def test_create_session_accepts_a_128_character_user_id(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "x" * 128})
    assert reply.status_code == 200, reply.text


def test_create_session_rejects_user_id_with_trailing_newline(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "alice\n"})
    assert reply.status_code == 400, reply.text


@pytest.mark.parametrize("ttl", [0, -1, 59, 86401])
def test_create_session_with_ttl_out_of_range_is_400(tenant: Tenant, ttl: int) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "alice", "ttlSeconds": ttl})
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == "INVALID_ARGUMENT"


def test_create_session_with_overlong_name_is_400(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.post("/v1/sessions", json={"userId": "alice", "name": "n" * 201})
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == "INVALID_ARGUMENT"


# --- webhook config ----------------------------------------------------------------


def test_put_webhook_returns_the_secret_once(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.put(
            WEBHOOK, json={"url": "https://example.com/hook", "events": ["call.missed"]}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["url"] == "https://example.com/hook"
        assert body["events"] == ["call.missed"]
        secret = str(body["secret"])
        assert secret.startswith("whsec_")
        assert len(secret) >= len("whsec_") + 32

        got = api.get(WEBHOOK)
    assert got.status_code == 200, got.text
    assert got.json() == {"url": "https://example.com/hook", "events": ["call.missed"]}
    assert "secret" not in got.json()
    assert secret not in got.text


def test_put_webhook_without_events_means_all_and_dedupes(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.put(WEBHOOK, json={"url": "http://example.com/a"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["events"] == []
        reply = api.put(
            WEBHOOK,
            json={
                "url": "http://example.com/b",
                "events": ["call.missed", "call.ended", "call.missed"],
            },
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["events"] == ["call.missed", "call.ended"]
        got = api.get(WEBHOOK).json()
    assert got == {"url": "http://example.com/b", "events": ["call.missed", "call.ended"]}


@pytest.mark.parametrize(
    "url", ["ftp://x", "not a url", "http://", "", "javascript:alert(1)", "example.com/hook"]
)
def test_put_webhook_with_bad_url_is_400_and_keeps_the_old_one(tenant: Tenant, url: str) -> None:
    with tenant.api() as api:
        assert api.put(WEBHOOK, json={"url": "https://example.com/ok"}).status_code == 200
        reply = api.put(WEBHOOK, json={"url": url})
        assert reply.status_code == 400, reply.text
        assert error_reason(reply) == "INVALID_ARGUMENT"
        assert api.get(WEBHOOK).json()["url"] == "https://example.com/ok"


def test_put_webhook_with_bad_url_on_fresh_tenant_sets_nothing(tenant: Tenant) -> None:
    with tenant.api() as api:
        assert api.put(WEBHOOK, json={"url": "ftp://x"}).status_code == 400
        reply = api.get(WEBHOOK)
    assert reply.status_code == 404, reply.text
    assert error_reason(reply) == "WEBHOOK_NOT_SET"


@pytest.mark.parametrize("events", [["call.exploded"], ["call.missed", "missed"], [""]])
def test_put_webhook_with_unknown_event_is_400(tenant: Tenant, events: list[str]) -> None:
    with tenant.api() as api:
        reply = api.put(WEBHOOK, json={"url": "https://example.com/hook", "events": events})
        assert reply.status_code == 400, reply.text
        assert error_reason(reply) == "INVALID_ARGUMENT"
        after = api.get(WEBHOOK)
    assert after.status_code == 404, after.text


def test_get_webhook_before_any_put_is_404(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.get(WEBHOOK)
    assert reply.status_code == 404, reply.text
    assert error_reason(reply) == "WEBHOOK_NOT_SET"


def test_delete_webhook_then_get_is_404(tenant: Tenant) -> None:
    with tenant.api() as api:
        assert api.put(WEBHOOK, json={"url": "https://example.com/hook"}).status_code == 200
        assert api.get(WEBHOOK).status_code == 200
        reply = api.delete(WEBHOOK)
        assert reply.status_code == 200, reply.text
        got = api.get(WEBHOOK)
        assert got.status_code == 404, got.text
        assert error_reason(got) == "WEBHOOK_NOT_SET"
        # deleting an absent endpoint is idempotent
        assert api.delete(WEBHOOK).status_code == 200


def test_session_token_cannot_touch_the_webhook(tenant: Tenant) -> None:
    with tenant.api() as api:
        assert api.put(WEBHOOK, json={"url": "https://example.com/hook"}).status_code == 200
    with tenant.user("alice") as user:
        for reply in (
            user.put(WEBHOOK, json={"url": "https://evil.example.com/"}),
            user.get(WEBHOOK),
            user.delete(WEBHOOK),
        ):
            assert reply.status_code == 403, reply.text
            assert error_reason(reply) == "API_KEY_REQUIRED"
    with tenant.api() as api:
        assert api.get(WEBHOOK).json()["url"] == "https://example.com/hook"


# --- tenant isolation ---------------------------------------------------------------


def test_settings_are_per_tenant(new_tenant: Callable[..., Tenant]) -> None:
    a, b = new_tenant(), new_tenant()
    a.patch_settings(maxParticipants=3, defaultType="audio", enabled=False)
    assert _settings(b) == DEFAULTS
    with b.user("alice") as user_b:
        assert user_b.get(SETTINGS).json()["calls"] == DEFAULTS
    with a.user("alice") as user_a:
        assert user_a.get(SETTINGS).json()["calls"] == {
            **DEFAULTS,
            "maxParticipants": 3,
            "defaultType": "audio",
            "enabled": False,
        }
    b.patch_settings(ringTimeoutSeconds=10)
    assert _settings(a)["ringTimeoutSeconds"] == 45


def test_webhooks_are_per_tenant(new_tenant: Callable[..., Tenant]) -> None:
    a, b = new_tenant(), new_tenant()
    with a.api() as api_a:
        assert api_a.put(WEBHOOK, json={"url": "https://a.example.com/"}).status_code == 200
    with b.api() as api_b:
        reply = api_b.get(WEBHOOK)
        assert reply.status_code == 404, reply.text
        assert api_b.delete(WEBHOOK).status_code == 200
    with a.api() as api_a:
        assert api_a.get(WEBHOOK).json()["url"] == "https://a.example.com/"


# --- API keys at rest --------------------------------------------------------------


def test_api_key_is_stored_only_as_sha256_of_its_secret(stack: Stack, tenant: Tenant) -> None:
    prefix, key_id, secret = tenant.api_key.split("_", 2)
    assert prefix == "sk"
    with psycopg.connect(stack.database_url) as conn:
        dump = [str(r[0]) for r in conn.execute("SELECT k::text FROM api_keys AS k").fetchall()]
        row = conn.execute(
            "SELECT tenant_id, secret_hash FROM api_keys WHERE id = %s", (key_id,)
        ).fetchone()
    assert dump, "api_keys is empty"
    assert not [r for r in dump if tenant.api_key in r]
    assert not [r for r in dump if secret in r]
    assert row is not None
    assert row[0] == tenant.tenant_id
    assert row[1] == hashlib.sha256(secret.encode()).hexdigest()
