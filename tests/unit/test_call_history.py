"""Call-history records: outcome and the data-call record built from hand-made calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf import json_format
from sendsar.calls.v1 import calls_pb2
from sendsar.chat.v1 import chat_pb2

from services.calls import history
from services.calls.domain import COMPLETED, DECLINED, MISSED, Call, Participant, outcome


def reason(rec: chat_pb2.CallRecord) -> str:
    """The record's end reason as its JSON (and the enum's value name) says it."""
    return calls_pb2.Call.EndReason.Name(rec.end_reason)


T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


def call(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "call_" + "a" * 32,
        "tenant_id": "tn_1",
        "room_id": "rm_1",
        "type": "video",
        "mode": "direct",
        "status": "ended",
        "created_by": "alice",
        "created_at": T0,
        "answered_at": None,
        "ended_at": T0 + timedelta(seconds=45),
        "end_reason": "timeout",
        "ring_timeout_seconds": 45,
        "livekit_room": "call_" + "a" * 32,
    }
    row.update(overrides)
    return row


def person(user_id: str, state: Any = "left", ever_joined: bool = True) -> Participant:
    return Participant(
        user_id=user_id,
        state=state,
        ever_joined=ever_joined,
        joined_at=T0 if ever_joined else None,
        left_at=T0 + timedelta(seconds=60) if ever_joined else None,
    )


def snap(row: dict[str, Any], *people: Participant) -> Call:
    if not people:
        people = (person("alice"), person("bob", state="invited", ever_joined=False))
    return Call(**row, participants=people)


def answered(seconds: float, **overrides: Any) -> Call:
    answered_at = T0 + timedelta(seconds=3)
    values: dict[str, Any] = {
        "answered_at": answered_at,
        "ended_at": answered_at + timedelta(seconds=seconds),
        "end_reason": "hangup",
    }
    row = call(**{**values, **overrides})
    return snap(row, person("alice"), person("bob"))


# --- outcome -----------------------------------------------------------------------------------


def test_an_answered_call_is_completed() -> None:
    assert outcome(answered(30)) == COMPLETED == "completed"


@pytest.mark.parametrize("reason", ["timeout", "cancelled", "no_answer", "hangup", "all_left"])
def test_an_unanswered_call_is_missed_whatever_ended_it(reason: str) -> None:
    assert outcome(snap(call(end_reason=reason))) == MISSED == "missed"


def test_a_declined_call_is_declined() -> None:
    row = call(end_reason="declined")
    decliner = person("bob", state="declined", ever_joined=False)
    assert outcome(snap(row, person("alice"), decliner)) == DECLINED == "declined"


@pytest.mark.parametrize("reason", ["hangup", "all_left", "media_ended"])
def test_an_answered_call_is_completed_whatever_ended_it(reason: str) -> None:
    assert outcome(answered(10, end_reason=reason)) == COMPLETED


def test_a_group_call_nobody_answered_is_missed() -> None:
    row = call(mode="group", status="ended", end_reason="all_left")
    people = (person("alice"), person("bob", "invited", False), person("carol", "declined", False))
    assert outcome(snap(row, *people)) == MISSED


# --- record ------------------------------------------------------------------------------------


def test_record_of_a_completed_call() -> None:
    s = answered(42.4, type="audio")
    rec = history.record(s)
    assert rec.call_id == s.id
    assert (rec.type, rec.mode, rec.outcome, reason(rec)) == (
        "audio",
        "direct",
        "completed",
        "hangup",
    )
    assert rec.initiator == "alice"
    assert list(rec.participants) == ["alice", "bob"]
    assert rec.started_at.ToDatetime(tzinfo=UTC) == T0
    assert rec.answered_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=3)
    assert rec.ended_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=45.4)
    assert rec.duration_seconds == 42  # from the answer, not from the start


@pytest.mark.parametrize(("seconds", "expected"), [(0.4, 0), (1.5, 2), (2.6, 3), (59.6, 60)])
def test_duration_is_rounded_to_whole_seconds(seconds: float, expected: int) -> None:
    assert history.record(answered(seconds)).duration_seconds == expected


def test_duration_is_never_negative() -> None:
    row = call(answered_at=T0 + timedelta(seconds=10), ended_at=T0 + timedelta(seconds=9))
    assert history.record(snap(row)).duration_seconds == 0


def test_long_calls_keep_their_full_duration() -> None:
    assert history.record(answered(3 * 3600 + 7)).duration_seconds == 3 * 3600 + 7


def test_record_of_a_missed_call_has_no_answer_time_and_no_duration() -> None:
    rec = history.record(snap(call()))
    assert (rec.outcome, reason(rec)) == ("missed", "timeout")
    assert not rec.HasField("answered_at")
    assert rec.HasField("started_at") and rec.HasField("ended_at")
    assert rec.duration_seconds == 0
    assert list(rec.participants) == ["alice"]  # the callee never joined


def test_record_of_a_declined_call() -> None:
    row = call(end_reason="declined", ended_at=T0 + timedelta(seconds=4))
    rec = history.record(snap(row, person("alice"), person("bob", "declined", False)))
    assert (rec.outcome, reason(rec), rec.initiator) == ("declined", "declined", "alice")
    assert list(rec.participants) == ["alice"]
    assert not rec.HasField("answered_at") and rec.duration_seconds == 0


def test_participants_are_those_who_ever_joined_in_snapshot_order() -> None:
    row = call(mode="group", answered_at=T0, end_reason="hangup")
    people = (
        person("alice"),
        person("bob", "invited", False),
        person("carol", "left", True),  # joined, then left
        person("dave", "declined", False),
        person("erin", "declined", True),  # joined, left, declined a re-invite
    )
    rec = history.record(snap(row, *people))
    assert list(rec.participants) == ["alice", "carol", "erin"]
    assert rec.mode == "group"


def test_a_missing_end_reason_is_left_out_of_the_part() -> None:
    [part] = history.parts(snap(call(end_reason=None)))
    assert "endReason" not in part["data"]
    [part] = history.parts(snap(call(end_reason="busy")))
    assert part["data"]["endReason"] == "busy"


def test_times_in_other_offsets_are_the_same_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    row = call(created_at=T0.astimezone(plus_two), ended_at=(T0 + timedelta(seconds=9)))
    rec = history.record(snap(row))
    assert rec.started_at.ToDatetime(tzinfo=UTC) == T0
    assert rec.started_at.seconds == int(T0.timestamp())


def test_the_data_call_part_renders_in_lower_camel_case() -> None:
    part = chat_pb2.Part(type="data-call", data=history.record(answered(12)))
    rendered = json_format.MessageToDict(part)
    assert rendered["type"] == "data-call"
    assert set(rendered["data"]) == {
        "callId",
        "type",
        "mode",
        "outcome",
        "endReason",
        "initiator",
        "participants",
        "startedAt",
        "answeredAt",
        "endedAt",
        "durationSeconds",
    }
    assert rendered["data"]["durationSeconds"] == 12  # int32: a JSON number, not a string
    assert rendered["data"]["startedAt"] == "2026-03-01T10:00:00Z"


def test_a_missed_call_renders_without_answered_at() -> None:
    rendered = json_format.MessageToDict(history.record(snap(call())))
    assert "answeredAt" not in rendered
    assert rendered["outcome"] == "missed"
