"""Input checks shared by the services; each failure is a 400 naming the field."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlparse

from google.protobuf import json_format, struct_pb2

from services.common.errors import invalid

_USER_ID = re.compile(r"[A-Za-z0-9._:@\-]{1,128}")
_RESOURCE_ID = re.compile(r"[a-z]{2,4}_[0-9a-f]{32}")

CALL_TYPES = ("audio", "video")


def user_id(value: str, field: str = "userId") -> str:
    if not _USER_ID.fullmatch(value):
        raise invalid(field, "must be 1-128 characters of letters, digits and . _ : @ -")
    return value


def resource_id(value: str, field: str) -> str:
    """Ids we issued; anything else cannot exist, so it is rejected before a lookup."""
    if not _RESOURCE_ID.fullmatch(value):
        raise invalid(field, "is not a valid id")
    return value


def int_range(value: int, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise invalid(field, f"must be between {low} and {high}")
    return value


def call_type(value: str, field: str = "type") -> str:
    if value not in CALL_TYPES:
        raise invalid(field, "must be 'audio' or 'video'", reason="INVALID_CALL_TYPE")
    return value


def one_of(value: str, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise invalid(field, "must be one of " + ", ".join(f"'{a}'" for a in allowed))
    return value


CUSTOM_MAX_BYTES = 4096


def custom_data(value: struct_pb2.Struct, field: str = "custom") -> dict[str, Any]:
    """The integrator's JSON object, at most 4 KiB as compact JSON."""
    data = json_format.MessageToDict(value)
    if len(json.dumps(data, separators=(",", ":")).encode()) > CUSTOM_MAX_BYTES:
        raise invalid(
            field, f"must be at most {CUSTOM_MAX_BYTES} bytes of JSON", reason="CUSTOM_TOO_LARGE"
        )
    return data


def http_url(value: str, field: str = "url") -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or len(value) > 2048:
        raise invalid(field, "must be an absolute http or https URL")
    return value
