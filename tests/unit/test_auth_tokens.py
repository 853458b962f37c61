"""Pure logic of credentials (common.auth) and input checks (common.validation)."""

from __future__ import annotations

import hashlib
import re
import time

import grpc
import jwt
import pytest

from services.common import auth, validation
from services.common.auth import Kind, Policy, Principal
from services.common.errors import ServiceError

KEY = "unit-test-signing-key-0123456789abcdef-0123456789"
OTHER_KEY = "another-unit-test-signing-key-0123456789abcdef-01"


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "sendsar",
        "aud": "sendsar-session",
        "sub": "alice",
        "tid": "tn_1",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unauthenticated(token: str, key: str = KEY) -> None:
    with pytest.raises(ServiceError) as caught:
        auth.verify_session(token, key)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "UNAUTHENTICATED"


# --- API keys ------------------------------------------------------------------------


def test_generated_api_key_format_and_hash() -> None:
    key = auth.generate_api_key()
    prefix, key_id, secret = key.plaintext.split("_", 2)
    assert prefix == "sk"
    assert key_id == key.key_id
    assert re.fullmatch(r"[0-9a-f]{16}", key_id)
    assert len(secret) >= 40  # 32 random bytes, url-safe base64
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in key.secret_hash
    assert auth.parse_api_key(key.plaintext) == (key_id, secret)


def test_generated_api_keys_differ() -> None:
    keys = [auth.generate_api_key() for _ in range(20)]
    assert len({k.plaintext for k in keys}) == 20
    assert len({k.key_id for k in keys}) == 20
    assert len({k.secret_hash for k in keys}) == 20


def test_hash_secret_is_sha256_hex() -> None:
    assert auth.hash_secret("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_parse_api_key_keeps_underscores_in_the_secret() -> None:
    assert auth.parse_api_key("sk_0123abcd_se_cr_et") == ("0123abcd", "se_cr_et")


@pytest.mark.parametrize(
    "value", ["", "sk_", "sk_abc", "sk__secret", "sk_abc_", "pk_abc_secret", "abc_secret", "SK_a_b"]
)
def test_parse_api_key_rejects_malformed(value: str) -> None:
    assert auth.parse_api_key(value) is None


def test_secret_matches() -> None:
    stored = auth.hash_secret("right")
    assert auth.secret_matches("right", stored)
    assert not auth.secret_matches("wrong", stored)
    assert not auth.secret_matches("", stored)
    assert not auth.secret_matches("right", stored.upper())


# --- session tokens ---------------------------------------------------------------------


def test_mint_and_verify_round_trip() -> None:
    before = int(time.time())
    token, expires_at = auth.mint_session(
        signing_key=KEY, tenant_id="tn_1", user_id="alice", name="Alice", ttl_seconds=120
    )
    assert before + 120 <= expires_at <= int(time.time()) + 120
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tid"] == "tn_1"
    assert claims["sub"] == "alice"
    assert claims["name"] == "Alice"
    assert claims["exp"] == expires_at
    assert claims["iss"] == "sendsar"
    assert claims["aud"] == "sendsar-session"
    principal = auth.verify_session(token, KEY)
    assert principal == Principal(tenant_id="tn_1", kind=Kind.SESSION, user_id="alice")


def test_mint_without_name_has_no_name_claim() -> None:
    token, _ = auth.mint_session(
        signing_key=KEY, tenant_id="tn_1", user_id="alice", name=None, ttl_seconds=60
    )
    assert "name" not in jwt.decode(token, options={"verify_signature": False})


def test_expired_token_is_refused() -> None:
    token, _ = auth.mint_session(
        signing_key=KEY, tenant_id="tn_1", user_id="alice", name=None, ttl_seconds=-10
    )
    _unauthenticated(token)


def test_token_signed_with_another_key_is_refused() -> None:
    token, _ = auth.mint_session(
        signing_key=OTHER_KEY, tenant_id="tn_1", user_id="alice", name=None, ttl_seconds=60
    )
    _unauthenticated(token)


def test_tampered_payload_is_refused() -> None:
    token, _ = auth.mint_session(
        signing_key=KEY, tenant_id="tn_1", user_id="alice", name=None, ttl_seconds=60
    )
    header, _payload, signature = token.split(".")
    forged_payload = jwt.encode(_claims(tid="tn_2"), KEY, algorithm="HS256").split(".")[1]
    _unauthenticated(f"{header}.{forged_payload}.{signature}")


def test_alg_none_is_refused() -> None:
    _unauthenticated(jwt.encode(_claims(), None, algorithm="none"))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_algorithms_are_refused_even_with_the_right_key(algorithm: str) -> None:
    _unauthenticated(jwt.encode(_claims(), KEY, algorithm=algorithm))


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "someone-else"},
        {"iss": "someone-else"},
        {"tid": None},
        {"tid": ""},
        {"tid": 42},
        {"sub": None},
        {"sub": ""},
        {"exp": None},
        {"iat": None},
        {"aud": None},
        {"iss": None},
    ],
)
def test_tokens_with_bad_claims_are_refused(overrides: dict[str, object]) -> None:
    _unauthenticated(jwt.encode(_claims(**overrides), KEY, algorithm="HS256"))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "sk_abc_def"])
def test_garbage_tokens_are_refused(token: str) -> None:
    _unauthenticated(token)


# --- policies --------------------------------------------------------------------------


API_KEY_PRINCIPAL = Principal(tenant_id="tn_1", kind=Kind.API_KEY)
SESSION_PRINCIPAL = Principal(tenant_id="tn_1", kind=Kind.SESSION, user_id="alice")


@pytest.mark.parametrize(
    ("policy", "principal"),
    [
        (Policy.PUBLIC, None),
        (Policy.PUBLIC, SESSION_PRINCIPAL),
        (Policy.ANY, API_KEY_PRINCIPAL),
        (Policy.ANY, SESSION_PRINCIPAL),
        (Policy.API_KEY, API_KEY_PRINCIPAL),
        (Policy.SESSION, SESSION_PRINCIPAL),
    ],
)
def test_check_policy_allows(policy: Policy, principal: Principal | None) -> None:
    auth.check_policy(policy, principal)


@pytest.mark.parametrize(
    ("policy", "principal", "code", "reason"),
    [
        (Policy.ANY, None, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (Policy.API_KEY, None, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (Policy.SESSION, None, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (
            Policy.API_KEY,
            SESSION_PRINCIPAL,
            grpc.StatusCode.PERMISSION_DENIED,
            "API_KEY_REQUIRED",
        ),
        (
            Policy.SESSION,
            API_KEY_PRINCIPAL,
            grpc.StatusCode.PERMISSION_DENIED,
            "SESSION_REQUIRED",
        ),
    ],
)
def test_check_policy_refuses(
    policy: Policy, principal: Principal | None, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(ServiceError) as caught:
        auth.check_policy(policy, principal)
    assert caught.value.code is code
    assert caught.value.reason == reason


def test_require_user() -> None:
    assert SESSION_PRINCIPAL.require_user() == "alice"
    with pytest.raises(ServiceError) as caught:
        API_KEY_PRINCIPAL.require_user()
    assert caught.value.reason == "SESSION_REQUIRED"


def test_current_principal_without_one_is_unauthenticated() -> None:
    token = auth.principal_var.set(None)
    try:
        with pytest.raises(ServiceError) as caught:
            auth.current_principal()
        assert caught.value.reason == "UNAUTHENTICATED"
        auth.principal_var.set(SESSION_PRINCIPAL)
        assert auth.current_principal() is SESSION_PRINCIPAL
    finally:
        auth.principal_var.reset(token)


# --- validation ---------------------------------------------------------------------------


def _invalid(reason: str = "INVALID_ARGUMENT") -> pytest.RaisesExc[ServiceError]:
    return pytest.raises(ServiceError, check=lambda e: e.reason == reason)


@pytest.mark.parametrize(
    "value", ["a", "alice", "alice@example.com", "u:1", "a.b-c_d", "x" * 128, "0"]
)
def test_user_id_accepts(value: str) -> None:
    assert validation.user_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", " ", "a b", " alice", "alice ", "x" * 129, "a/b", "a\tb", "ü", "a\nb", "alice\n"],
)
def test_user_id_rejects(value: str) -> None:
    with pytest.raises(ServiceError) as caught:
        validation.user_id(value, "members")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert [f for f, _ in caught.value.violations] == ["members"]


@pytest.mark.parametrize("value", ["rm_" + "0" * 32, "cl_" + "a1" * 16, "abcd_" + "f" * 32])
def test_resource_id_accepts(value: str) -> None:
    assert validation.resource_id(value, "roomId") == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "xyz",
        "rm_123",
        "RM_" + "0" * 32,
        "rm_" + "A" * 32,
        "rm_" + "g" * 32,
        "rm_" + "0" * 33,
        "r_" + "0" * 32,
        "abcde_" + "0" * 32,
        " rm_" + "0" * 32,
        "rm_" + "0" * 32 + "\n",
    ],
)
def test_resource_id_rejects(value: str) -> None:
    with _invalid():
        validation.resource_id(value, "roomId")


def test_int_range_bounds() -> None:
    assert validation.int_range(2, "n", 2, 100) == 2
    assert validation.int_range(100, "n", 2, 100) == 100
    for bad in (1, 101, 0, -1):
        with _invalid():
            validation.int_range(bad, "n", 2, 100)


def test_call_type() -> None:
    assert validation.call_type("audio") == "audio"
    assert validation.call_type("video") == "video"
    for bad in ("", "fax", "Video", " audio"):
        with _invalid("INVALID_CALL_TYPE"):
            validation.call_type(bad)


@pytest.mark.parametrize(
    "url", ["http://example.com", "https://example.com/hook?x=1", "http://127.0.0.1:8080/h"]
)
def test_http_url_accepts(url: str) -> None:
    assert validation.http_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://x",
        "not a url",
        "http://",
        "example.com/hook",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_http_url_rejects(url: str) -> None:
    with _invalid():
        validation.http_url(url)
