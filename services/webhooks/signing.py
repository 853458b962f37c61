"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<raw body>" with the tenant's secret.

Header: `Sendsar-Signature: t=<unix seconds>,v1=<hex digest>`. Signing the timestamp
with the body lets a receiver reject replays of an old delivery; see docs/webhooks.md.
Pure functions, shared by the dispatcher, the tests and the documentation's example.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Sendsar-Signature"
EVENT_ID_HEADER = "Sendsar-Event-Id"
TIMESTAMP_HEADER = "Sendsar-Timestamp"
DEFAULT_TOLERANCE_SECONDS = 300


def digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Sendsar-Signature header value for one delivery attempt."""
    return f"t={timestamp},v1={digest(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> bool:
    """True when `header` signs exactly `body` with `secret`, within `tolerance` seconds.

    Several v1 entries are accepted (any one matching is enough), so a future secret
    rotation can sign with the old and the new secret at once.
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = digest(secret, timestamp, body)
    # Constant-time comparison; every entry is checked so timing leaks nothing either.
    matches = [hmac.compare_digest(expected, s) for s in signatures]
    return any(matches)
