"""Page tokens of the keyset listings (the call log, the webhook deliveries): a position,
signed for one listing, one tenant and one filter set.

A token names where the previous page stopped in a listing's order, `(createdAt, id)`
newest first. It is opaque to clients and signed with a key derived from the session
signing key and the listing's name (like ring tokens, so there is no new secret to deploy
and rotate), over the tenant, the filters and the position: a token cannot be edited,
carried to another tenant or listing, or reused with other filters (each is a 400 naming
`pageToken`). Every query is scoped to the caller's tenant anyway; the signature keeps
positions from being probed and a page from silently mixing two filter sets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.common.errors import ServiceError, invalid

MAX_TOKEN = 256  # characters: a token of ours is about 110
_MAC_BYTES = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Position:
    """A row's place in a listing ordered by (created_at, id), newest first."""

    created_at: datetime
    id: str


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _refused() -> ServiceError:
    return invalid("pageToken", "is not a token of this listing (same API key and filters)")


class PageTokens:
    def __init__(self, session_signing_key: str, listing: str) -> None:
        # "call log" derives the key its tokens had before other listings shared this.
        purpose = f"sendsar {listing} page tokens v1".encode()
        self._key = hmac.new(session_signing_key.encode(), purpose, hashlib.sha256).digest()

    def _mac(self, tenant_id: str, filters: str, body: bytes) -> bytes:
        message = b"\0".join((tenant_id.encode(), filters.encode(), body))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, tenant_id: str, filters: str, position: Position) -> str:
        """The token of the page after `position`; `filters` is the listing's filter set,
        rendered the same way every time (e.g. `call_log.Filters.canonical`)."""
        body = f"{_micros(position.created_at)}.{position.id}".encode()
        raw = body + b"." + self._mac(tenant_id, filters, body)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, tenant_id: str, filters: str, token: str) -> Position:
        """The position a token names, if this tenant's listing with these filters issued
        it; else 400."""
        if len(token) > MAX_TOKEN:
            raise _refused()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _refused() from None
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
            raise _refused()  # only the one spelling we issue
        body, mac = raw[: -_MAC_BYTES - 1], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES + 1 or not hmac.compare_digest(
            mac, self._mac(tenant_id, filters, body)
        ):
            raise _refused()
        micros, _, row_id = body.decode().partition(".")
        return Position(_EPOCH + timedelta(microseconds=int(micros)), row_id)
