"""Subjects and their tenants; what NATS would refuse before anything is sent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from services.events import types
from services.events.publish import Message, refusal


@pytest.mark.parametrize(
    ("subject", "tenant"),
    [
        ("sendsar.ten_1.calls.invite", "ten_1"),
        ("sendsar.ten_1.calls.ring_stopped", "ten_1"),
        ("sendsar..calls.invite", None),
        ("sendsar.ten_1.chat.invite", None),
        ("other.ten_1.calls.invite", None),
        ("sendsar.ten_1.calls", None),
    ],
)
def test_tenant_of_a_subject(subject: str, tenant: str | None) -> None:
    assert types.tenant_of(subject) == tenant


def test_subject_round_trips_to_its_tenant() -> None:
    assert types.tenant_of(types.subject("ten_abc", types.MISSED)) == "ten_abc"


def _nc(max_payload: int) -> Any:
    return SimpleNamespace(max_payload=max_payload)


def test_refusal_counts_the_header_against_max_payload() -> None:
    ok = Message("evt_1", "sendsar.t.calls.invite", b"x" * 900)
    assert refusal(_nc(1024), ok) is None
    too_big = Message("evt_1", "sendsar.t.calls.invite", b"x" * 1000)  # + id + header > 1024
    assert "MaxPayloadError" in str(refusal(_nc(1024), too_big))


def test_refusal_of_a_malformed_subject() -> None:
    assert "BadSubjectError" in str(refusal(_nc(1 << 20), Message("e", "sendsar.a b.calls", b"")))
