"""Input checks shared by the services; each failure is a 400 naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from services.common.errors import invalid

_USER_ID = re.compile(r"[A-Za-z0-9._:@\-]{1,128}")
_RESOURCE_ID = re.compile(r"[a-z]{2,4}_[0-9a-f]{32}")

CALL_TYPES = ("audio", "video")
# A 1:1 callee already in a live call: rings anyway (call waiting), or the call ends "busy".
BUSY_POLICIES = ("ring", "reject")
# Guests knocking: wait in the lobby until admitted ("host"), or join at once ("off").
LOBBIES = ("host", "off")
# Guests' participant ids; no app user id may look like one.
GUEST_PREFIX = "guest:"


def user_id(value: str, field: str = "userId") -> str:
    if not _USER_ID.fullmatch(value):
        raise invalid(field, "must be 1-128 characters of letters, digits and . _ : @ -")
    if value.startswith(GUEST_PREFIX):
        raise invalid(field, f"must not start with '{GUEST_PREFIX}' (guests' ids do)")
    return value


def participant_id(value: str, field: str = "userId") -> str:
    """A call participant: an app user's id, or a guest's ("guest:<guestId>")."""
    if value.startswith(GUEST_PREFIX):
        resource_id(value.removeprefix(GUEST_PREFIX), field)
        return value
    return user_id(value, field)


def user_ids(values: Sequence[str], field: str, *, most: int) -> list[str]:
    """A non-empty list of at most `most` user ids, duplicates dropped (order kept)."""
    if not values:
        raise invalid(field, "must name at least one user")
    if len(values) > most:
        raise invalid(field, f"must name at most {most} users")
    return list(dict.fromkeys(user_id(v, f"{field}[{i}]") for i, v in enumerate(values)))


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


MAX_URL = 2048


def http_url(value: str, field: str = "url") -> str:
    try:
        parsed = urlparse(value)
        _ = parsed.port  # raises on a port that is not a number in range
    except ValueError:
        parsed = None
    if (
        parsed is None
        or parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or len(value) > MAX_URL
        or any(c.isspace() for c in value)
    ):
        raise invalid(
            field, f"must be an absolute http or https URL of at most {MAX_URL} characters"
        )
    return value


# --- every request, before its handler ------------------------------------------------

# Caps every string and list of every request obeys; fields with a smaller cap of
# their own (ids, names, message text, ...) are checked by their handler.
MAX_STRING = 8192
MAX_LIST = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Free text may hold tabs and line breaks; every other string is one line.
_MULTILINE = frozenset({"sendsar.chat.v1.Part.text"})
# Well-known JSON values (a call's `custom` object) are walked as the JSON they carry.
_JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
# Opaque payloads: bytes, or signed bodies checked by their own RPC.
_OPAQUE_TYPES = frozenset({"google.protobuf.Any", "google.api.HttpBody"})


def _string(path: str, value: str, multiline: bool) -> None:
    if len(value) > MAX_STRING:
        raise invalid(path, f"must be at most {MAX_STRING} characters")
    if (_CONTROL_BUT_LINE_BREAKS if multiline else _CONTROL).search(value):
        allowed = " (tab and line breaks are allowed)" if multiline else ""
        raise invalid(path, f"must not contain control characters{allowed}")


def _json(path: str, value: object) -> None:
    if isinstance(value, str):
        _string(path, value, multiline=True)
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise invalid(path, f"must hold at most {MAX_LIST} items")
        for i, item in enumerate(value):
            _json(f"{path}[{i}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _string(f"{path} (key)", key, multiline=False)
            _json(f"{path}.{key}" if path else key, item)


def request_strings(message: Message, prefix: str = "") -> None:
    """400 naming the field (lowerCamel JSON path) for a control character, an over-long
    string or list anywhere in a request; PostgreSQL cannot even store a NUL."""
    if message.DESCRIPTOR.full_name in _OPAQUE_TYPES:
        return
    if message.DESCRIPTOR.full_name in _JSON_TYPES:
        _json(prefix.rstrip("."), json_format.MessageToDict(message))
        return
    for field, value in message.ListFields():
        path = f"{prefix}{field.json_name}"
        multiline = field.full_name in _MULTILINE
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = list(value.items())
            if len(items) > MAX_LIST:
                raise invalid(path, f"must hold at most {MAX_LIST} entries")
            for key, item in items:
                if isinstance(key, str):
                    _string(f"{path} (key)", key, multiline=False)
                _value(f"{path}.{key}", item, multiline)
        elif field.is_repeated:
            if len(value) > MAX_LIST:
                raise invalid(path, f"must hold at most {MAX_LIST} items")
            for i, item in enumerate(value):
                _value(f"{path}[{i}]", item, multiline)
        else:
            _value(path, value, multiline)


def _value(path: str, value: object, multiline: bool) -> None:
    if isinstance(value, str):
        _string(path, value, multiline)
    elif isinstance(value, Message):
        request_strings(value, f"{path}.")
