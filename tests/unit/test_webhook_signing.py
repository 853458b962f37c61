"""Webhook signing, back-off and body rendering (pure logic, no stack)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from sendsar.calls.v1 import calls_pb2, events_pb2

from services.common.settings import Settings
from services.webhooks import signing
from services.webhooks.delivery import next_delay, signed_headers
from services.webhooks.intake import delivery_body, wanted

SECRET = "whsec_unit-test-secret"
BODY = b'{"id":"evt_1","type":"call.missed"}'
T = 1_700_000_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signing.sign(SECRET, T, BODY) == f"t={T},v1={expected}"


def test_round_trip_within_tolerance() -> None:
    header = signing.sign(SECRET, T, BODY)
    assert signing.verify(SECRET, header, BODY, now=T)
    assert signing.verify(SECRET, header, BODY, now=T + 300)
    assert signing.verify(SECRET, header, BODY, now=T - 300)  # receiver clock behind
    assert signing.verify(SECRET, header, BODY, 3600, now=T + 3000)


@pytest.mark.parametrize(
    "body",
    [BODY.replace(b"missed", b"ended"), BODY + b"\n", BODY[:-1], b""],
)
def test_any_change_to_the_body_fails(body: bytes) -> None:
    assert not signing.verify(SECRET, signing.sign(SECRET, T, BODY), body, now=T)


def test_wrong_secret_old_timestamp_or_changed_timestamp_fail() -> None:
    header = signing.sign(SECRET, T, BODY)
    assert not signing.verify("whsec_other", header, BODY, now=T)
    assert not signing.verify(SECRET, header, BODY, now=T + 301)  # a replay, later
    assert not signing.verify(SECRET, header, BODY, now=T - 301)
    moved = header.replace(f"t={T}", f"t={T + 1}")  # the timestamp is signed too
    assert not signing.verify(SECRET, moved, BODY, now=T)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=,v1=00", "t=x,v1=00", "v1=00", f"t={T}", f"t={T},v1=", f"t={T},,v1=0"],
)
def test_malformed_headers_fail(header: str) -> None:
    assert not signing.verify(SECRET, header, BODY, now=T)


def test_spaces_and_several_signatures_are_accepted() -> None:
    digest = signing.digest(SECRET, T, BODY)
    assert signing.verify(SECRET, f"t={T}, v1={digest}", BODY, now=T)
    assert signing.verify(SECRET, f"t={T},v1={'0' * 64},v1={digest}", BODY, now=T)
    assert not signing.verify(SECRET, f"t={T},v1={'0' * 64}", BODY, now=T)


def test_headers_carry_event_id_timestamp_and_signature() -> None:
    headers = signed_headers("evt_1", SECRET, BODY, T)
    assert headers["Content-Type"] == "application/json"
    assert headers["Sendsar-Event-Id"] == "evt_1"
    assert headers["Sendsar-Timestamp"] == str(T)
    assert signing.verify(SECRET, headers["Sendsar-Signature"], BODY, now=T)
    assert SECRET not in "".join(headers.values())


def _settings(**kw: object) -> Settings:
    return Settings(ENV="test", DATABASE_URL="postgresql://u@localhost/db", **kw)  # type: ignore[arg-type]


def test_back_off_is_exponential_capped_with_full_jitter() -> None:
    s = _settings(WEBHOOK_BASE_DELAY_SECONDS=1.0, WEBHOOK_MAX_DELAY_SECONDS=60.0)
    for attempts, full in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 32.0), (6, 60.0), (40, 60.0)]:
        delays = [next_delay(s, attempts) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays), (attempts, min(delays), max(delays))
        assert max(delays) - min(delays) > full * 0.2  # jittered, not a fixed value
    assert next_delay(s, 10_000) <= 60.0  # no overflow for absurd counts


def _event() -> events_pb2.CallEvent:
    event = events_pb2.CallEvent(
        id="evt_1",
        type="call.missed",
        tenant_id="tn_1",
        user_id="alice",
        call=calls_pb2.Call(id="cal_1", room_id="rm_1", status="ended", created_by="alice"),
        recipient_user_ids=["alice", "bob"],
    )
    event.occurred_at.FromSeconds(T)
    return event


def test_body_is_the_event_in_camel_case_without_recipients() -> None:
    body = delivery_body(_event())
    data = json.loads(body)
    assert data["id"] == "evt_1" and data["type"] == "call.missed"
    assert data["tenantId"] == "tn_1" and data["occurredAt"] == "2023-11-14T22:13:20Z"
    assert data["call"]["roomId"] == "rm_1" and data["call"]["createdBy"] == "alice"
    assert "recipientUserIds" not in data
    assert delivery_body(_event()) == body  # stable bytes: every retry signs the same


def test_event_filter() -> None:
    assert wanted([], "call.started") and wanted(None, "call.invite")
    assert wanted(["call.missed"], "call.missed")
    assert not wanted(["call.missed"], "call.ended")
