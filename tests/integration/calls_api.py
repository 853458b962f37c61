"""REST helpers for call tests (through Envoy, as an app would call)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import error_reason


def calls(room: str, call_id: str | None = None, action: str | None = None) -> str:
    path = f"/chat/rooms/{room}/calls"
    if call_id:
        path += f"/{call_id}"
    if action:
        path += f"/{action}"
    return path


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def start(user: httpx.Client, room: str, **body: Any) -> dict[str, Any]:
    return ok(user.post(calls(room), json=body))


def act(user: httpx.Client, room: str, call_id: str, action: str, **body: Any) -> dict[str, Any]:
    return ok(user.post(calls(room, call_id, action), json=body))


def refused(reply: httpx.Response, status: int, reason: str) -> None:
    assert reply.status_code == status, reply.text
    assert error_reason(reply) == reason, reply.text


def active(user: httpx.Client, room: str) -> dict[str, Any]:
    return ok(user.get(calls(room) + "/active"))


def states(call: dict[str, Any]) -> dict[str, str]:
    return {p["userId"]: p["state"] for p in call["participants"]}


def history(user: httpx.Client, room: str) -> list[dict[str, Any]]:
    """The room's data-call records, newest first."""
    messages = ok(user.get(f"/chat/rooms/{room}/messages", params={"pageSize": 100}))["messages"]
    return [p["data"] for m in messages for p in m["parts"] if p["type"] == "data-call"]


def wait_ended(user: httpx.Client, room: str, within: float) -> float:
    """Polls until the room has no live call; returns when that was seen."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if active(user, room) == {}:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"the call in {room} did not end within {within}s")
