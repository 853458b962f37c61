"""Opaque cursors for reading on (the events feed).

A cursor is a kind and a few fields in URL-safe base64. Opaque to clients, not secret:
every query it feeds is scoped to the caller's tenant, so another tenant's cursor reads
nothing of theirs. A cursor that does not decode is a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii

from services.common.errors import invalid

MAX_TOKEN = 200
_SEPARATOR = "|"


def encode(kind: str, *fields: str) -> str:
    return base64.urlsafe_b64encode(_SEPARATOR.join((kind, *fields)).encode()).decode()


def decode(token: str, kind: str, count: int, field: str) -> list[str]:
    """The `count` fields of a token of this kind, else a 400 for `field`."""
    try:
        if len(token) <= MAX_TOKEN:
            parts = base64.urlsafe_b64decode(token.encode()).decode().split(_SEPARATOR)
            if len(parts) == count + 1 and parts[0] == kind:
                return parts[1:]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise invalid(field, "is not a token returned by this API")
