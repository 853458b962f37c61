"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>" with the tenant's secret.

Header: `Sendsar-Signature: t=<unix seconds>,v1=<hex digest>`. Receivers recompute the
digest over the raw body and reject old timestamps (replays); see docs/webhooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Sendsar-Signature"


def digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={digest(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: int = 300, now: float | None = None
) -> bool:
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(fields["t"])
        signature = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(digest(secret, timestamp, body), signature)
