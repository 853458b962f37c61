"""Credentials: tenant API keys (hashed at rest) and app-user session JWTs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum

import jwt

from services.common.errors import ServiceError, forbidden, unauthenticated

API_KEY_PREFIX = "sk_"
SESSION_ALGORITHM = "HS256"  # pinned: tokens naming any other algorithm are refused
SESSION_AUDIENCE = "sendsar-session"
SESSION_ISSUER = "sendsar"


class Kind(Enum):
    API_KEY = "api_key"
    SESSION = "session"
    RING = "ring"  # a ring token: answers (accepts or declines) one call as one user
    GUEST = "guest"  # a guest session: takes part in one call (through its link)


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    kind: Kind
    user_id: str | None = None  # set for sessions and ring tokens
    call_id: str | None = None  # set for ring tokens: the one call they answer
    # The API key: its own id for API keys; for sessions, the key that minted them (None
    # for sessions minted before sessions named their key).
    api_key_id: str | None = None

    def require_user(self) -> str:
        """The app user acting; only RPCs whose policy admits ring tokens see those."""
        if self.kind is Kind.API_KEY or self.user_id is None:
            raise forbidden("SESSION_REQUIRED", "this call needs an app user's session token")
        return self.user_id


class Policy(Enum):
    """Who may call an RPC; every RPC of a service must be listed."""

    PUBLIC = "public"  # no credentials (the RPC checks its own signature)
    API_KEY = "api_key"
    SESSION = "session"
    ANSWER = "answer"  # a session, or a ring token of the call (checked by the RPC)
    JOIN = "join"  # ANSWER, or a guest session of the call (accept)
    IN_CALL = "in_call"  # a session, or a guest session of the call (leave, token)
    READ_CALL = "read_call"  # an API key, a session, or a guest session of the call
    ANY = "any"  # an API key or a session


principal_var: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:
        raise unauthenticated()
    return principal


# --- API keys: sk_<key id>_<secret>; only sha256(secret) is stored ---------


@dataclass(frozen=True)
class NewApiKey:
    key_id: str
    plaintext: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is not brute-forceable.
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_api_key() -> NewApiKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(key_id, f"{API_KEY_PREFIX}{key_id}_{secret}", hash_secret(secret))


def parse_api_key(value: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    if not value.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, secret = value[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


# --- session tokens ---------------------------------------------------------


# The claim naming the API key that minted a session: revoking that key ends its sessions.
API_KEY_CLAIM = "akid"


def mint_session(
    *,
    signing_key: str,
    tenant_id: str,
    user_id: str,
    name: str | None,
    ttl_seconds: int,
    api_key_id: str | None = None,
) -> tuple[str, int]:
    now = int(time.time())
    expires_at = now + ttl_seconds
    claims: dict[str, object] = {
        "iss": SESSION_ISSUER,
        "aud": SESSION_AUDIENCE,
        "sub": user_id,
        "tid": tenant_id,
        "iat": now,
        "exp": expires_at,
    }
    if name:
        claims["name"] = name
    if api_key_id:
        claims[API_KEY_CLAIM] = api_key_id
    return jwt.encode(claims, signing_key, algorithm=SESSION_ALGORITHM), expires_at


# Verified session tokens and their expiry. A client sends the same token with every
# request for up to its lifetime, and HMAC-verifying and decoding the JWT each time was
# a visible share of a request's CPU; a hit costs one dict lookup and a clock read.
_SESSION_CACHE_MAX = 50_000
_verified: dict[tuple[str, str], tuple[int, Principal]] = {}


def verify_session(token: str, signing_key: str) -> Principal:
    """The session token's principal; verified once per process, then cached until expiry.
    Whether the API key that minted it is still active is the Authenticator's check."""
    key = (token, signing_key)
    hit = _verified.get(key)
    if hit is not None:
        if hit[0] > time.time():
            return hit[1]
        del _verified[key]
        raise unauthenticated("session token expired")
    principal, expires_at = _verify_session(token, signing_key)
    if len(_verified) >= _SESSION_CACHE_MAX:
        _verified.clear()  # bounded memory; hot tokens come back on their next request
    _verified[key] = (expires_at, principal)
    return principal


def _verify_session(token: str, signing_key: str) -> tuple[Principal, int]:
    try:
        claims = jwt.decode(
            token,
            signing_key,
            algorithms=[SESSION_ALGORITHM],
            audience=SESSION_AUDIENCE,
            issuer=SESSION_ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthenticated("session token expired") from None
    except jwt.InvalidTokenError:
        raise unauthenticated("invalid session token") from None
    tenant_id, user_id = claims.get("tid"), claims.get("sub")
    key_id = claims.get(API_KEY_CLAIM)
    if (
        not isinstance(tenant_id, str)
        or not isinstance(user_id, str)
        or not tenant_id
        or not user_id
        or not (key_id is None or (isinstance(key_id, str) and key_id))
    ):
        raise unauthenticated("invalid session token")
    principal = Principal(
        tenant_id=tenant_id, kind=Kind.SESSION, user_id=user_id, api_key_id=key_id
    )
    return principal, int(claims["exp"])


def check_policy(policy: Policy, principal: Principal | None) -> None:
    if policy is Policy.PUBLIC:
        return
    if principal is None:
        raise unauthenticated()
    if principal.kind is Kind.RING and policy not in (Policy.ANSWER, Policy.JOIN):
        # Not a credential for anything else: as if none had been given.
        raise unauthenticated("a ring token only accepts or declines its call")
    if principal.kind is Kind.GUEST and policy not in (
        Policy.JOIN,
        Policy.IN_CALL,
        Policy.READ_CALL,
    ):
        raise unauthenticated("a guest token only joins, leaves or reads its own call")
    if policy is Policy.API_KEY and principal.kind is not Kind.API_KEY:
        raise forbidden("API_KEY_REQUIRED", "this call needs the tenant's API key")
    if (
        policy not in (Policy.ANY, Policy.API_KEY, Policy.READ_CALL)
        and principal.kind is Kind.API_KEY
    ):
        raise forbidden("SESSION_REQUIRED", "this call needs an app user's session token")


# --- tokens scoped to one call: ring tokens and guest sessions --------------------------

# rt_<JWT>, gt_<JWT>: the prefix tells them from session tokens without decoding anything.
RING_TOKEN_PREFIX = "rt_"
GUEST_TOKEN_PREFIX = "gt_"
# gl_<link id>_<secret>: a call link guests knock with (only the secret's hash is stored;
# services/calls/transitions.py redeems it).
LINK_TOKEN_PREFIX = "gl_"


class CallTokens:
    """Tokens that act in one call as one user, signed with a key derived from the session
    signing key (no new secret to deploy and rotate) and a label of their own, so no kind
    of token can pass for another even if a check were missed (another key, another
    audience, the prefix):

    - ring tokens (`RingTokens`): what a VoIP push carries so that an app without a
      session yet can accept or decline the one call that rings (shared/DESIGN.md,
      "Ringing done right");
    - guest sessions (`GuestTokens`): a guest's credential for the one call whose link
      they knocked with ("Guests and the lobby")."""

    prefix: str
    audience: str
    label: bytes
    kind: Kind
    what: str

    def __init__(self, session_signing_key: str) -> None:
        self._key = hmac.new(session_signing_key.encode(), self.label, hashlib.sha256).hexdigest()

    def mint(self, *, tenant_id: str, call_id: str, user_id: str, expires_at: int) -> str:
        claims = {
            "iss": SESSION_ISSUER,
            "aud": self.audience,
            "tid": tenant_id,
            "cid": call_id,
            "sub": user_id,
            "exp": expires_at,
        }
        return self.prefix + jwt.encode(claims, self._key, algorithm=SESSION_ALGORITHM)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token.removeprefix(self.prefix),
                self._key,
                algorithms=[SESSION_ALGORITHM],
                audience=self.audience,
                issuer=SESSION_ISSUER,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated(f"{self.what} expired") from None
        except jwt.InvalidTokenError:
            raise unauthenticated(f"invalid {self.what}") from None
        ids = (claims.get("tid"), claims.get("sub"), claims.get("cid"))
        if not all(isinstance(i, str) and i for i in ids):
            raise unauthenticated(f"invalid {self.what}")
        tenant_id, user_id, call_id = (str(i) for i in ids)
        return Principal(tenant_id=tenant_id, kind=self.kind, user_id=user_id, call_id=call_id)


def token_expiry(token: str) -> float:
    """When a token that verified expires (its `exp`, read without checking again)."""
    for prefix in (GUEST_TOKEN_PREFIX, RING_TOKEN_PREFIX):
        token = token.removeprefix(prefix)
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


class RingTokens(CallTokens):
    """Expire at the ring's deadline; answer only while the ring is live (checked against
    the call by the RPC)."""

    prefix, audience, label = RING_TOKEN_PREFIX, "sendsar-ring", b"sendsar ring tokens v1"
    kind, what = Kind.RING, "ring token"


class GuestTokens(CallTokens):
    """Expire with the link the guest knocked with; their user is "guest:<guestId>"."""

    prefix, audience, label = GUEST_TOKEN_PREFIX, "sendsar-guest", b"sendsar guest tokens v1"
    kind, what = Kind.GUEST, "guest token"


__all__ = ["Principal", "ServiceError"]
