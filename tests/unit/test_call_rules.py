"""The call rules (services/calls/domain.py) in-process: every lifecycle row of 1:1 and
group calls, glare, late answers, the participant cap, creator rules and every refusal,
against the pure functions — no database, milliseconds each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from services.calls import domain
from services.calls.domain import Call, CallPolicy, Change, Event
from services.common.errors import ServiceError
from services.events import types as events

T0 = datetime(2026, 5, 1, 9, 0, 0, tzinfo=UTC)
POLICY = CallPolicy(enabled=True, max_participants=8, ring_timeout_seconds=45, default_type="video")
ROOM, TENANT = "rm_1", "tn_1"


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start(
    *members: str,
    by: str = "alice",
    policy: CallPolicy = POLICY,
    call_type: str | None = None,
    callee_busy: bool = False,
) -> Change:
    return domain.new_call(
        call_id="call_1",
        tenant_id=TENANT,
        room_id=ROOM,
        members=list(members),
        user_id=by,
        call_type=call_type,
        policy=policy,
        now=T0,
        callee_busy=callee_busy,
    )


def started(*members: str, by: str = "alice", policy: CallPolicy = POLICY) -> Call:
    return start(*members, by=by, policy=policy).call


def direct() -> Call:
    return started("alice", "bob")


def group(*extra: str) -> Call:
    return started("alice", "bob", "carol", *extra)


def states(call: Call) -> dict[str, str]:
    return {p.user_id: p.state for p in call.participants}


def types(change: Change) -> list[str]:
    return [e.type for e in change.events]


def refused(reason: str, code: grpc.StatusCode) -> pytest.RaisesExc[ServiceError]:
    return pytest.raises(ServiceError, check=lambda e: (e.reason, e.code) == (reason, code))


CONFLICT, FORBIDDEN = grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED


# --- start ---------------------------------------------------------------------------------


def test_direct_start_rings_the_callee_until_the_deadline() -> None:
    change = domain.new_call(
        call_id="call_1",
        tenant_id=TENANT,
        room_id=ROOM,
        members=["bob", "alice"],
        user_id="alice",
        call_type=None,
        policy=POLICY,
        now=T0,
    )
    call = change.call
    assert (call.mode, call.status, call.type, call.created_by) == (
        "direct",
        "ringing",
        "video",
        "alice",
    )
    assert call.ring_deadline == later(45) and call.ring_timeout_seconds == 45
    assert states(call) == {"alice": "joined", "bob": "invited"}
    assert call.livekit_room == call.id
    assert change.events == [
        Event(events.STARTED, "alice", ()),
        Event(events.INVITE, "alice", ("bob",), ring_until=later(45)),
    ]
    assert change.call.ringing() == ("bob",)


def test_group_start_is_active_at_once_and_invites_everyone_else() -> None:
    change = domain.new_call(
        call_id="call_1",
        tenant_id=TENANT,
        room_id=ROOM,
        members=["alice", "bob", "carol"],
        user_id="bob",
        call_type="audio",
        policy=POLICY,
        now=T0,
    )
    assert (change.call.mode, change.call.status, change.call.type) == ("group", "active", "audio")
    assert change.call.ring_deadline is None  # the call never times out; invitations do
    assert change.events[1] == Event(events.INVITE, "bob", ("alice", "carol"), ring_until=later(45))
    assert change.call.ringing() == ("alice", "carol")


def test_a_room_of_one_cannot_host_a_call() -> None:
    with refused("ROOM_TOO_SMALL", CONFLICT):
        started("alice")


def test_the_callers_other_device_starting_again_gets_the_same_ringing_call() -> None:
    call = direct()
    change = domain.join_live(call, "alice", POLICY, later(1))
    assert change.call == call and change.events == []


def test_glare_the_callee_starting_in_the_room_accepts_the_call() -> None:
    change = domain.join_live(direct(), "bob", POLICY, later(2))
    assert change.call.status == "active" and change.call.answered_at == later(2)
    assert change.call.ring_deadline is None
    assert states(change.call) == {"alice": "joined", "bob": "joined"}
    assert types(change) == [events.ACCEPTED, events.RING_STOPPED]
    assert change.events[0].recipients == ("alice", "bob")
    assert change.events[1] == Event(events.RING_STOPPED, "bob", ("bob",), reason="accepted")


def test_starting_in_a_room_with_a_live_group_call_joins_it() -> None:
    change = domain.join_live(group(), "carol", POLICY, later(5))
    assert states(change.call)["carol"] == "joined"
    assert change.call.answered_at == later(5)  # the first one in besides the creator
    assert types(change) == [events.PARTICIPANT_JOINED, events.RING_STOPPED]
    assert change.call.ringing() == ("bob",)


def test_a_member_added_after_a_direct_call_began_cannot_take_it_over() -> None:
    with refused("NOT_CALL_PARTICIPANT", FORBIDDEN):
        domain.join_live(direct(), "mallory", POLICY, later(1))


# --- accept ----------------------------------------------------------------------------------


def test_accept_answers_a_ringing_direct_call() -> None:
    change = domain.accept(direct(), "bob", POLICY, later(3))
    assert change.call.status == "active"
    p = change.call.participant("bob")
    assert p is not None and p.joined_at == later(3) and p.ever_joined
    assert types(change) == [events.ACCEPTED, events.RING_STOPPED]
    assert change.call.ringing() == ()


def test_the_caller_cannot_accept_their_own_call() -> None:
    with refused("CANNOT_ACCEPT_OWN_CALL", CONFLICT):
        domain.accept(direct(), "alice", POLICY, later(1))


def test_an_answer_at_or_after_the_deadline_ends_the_call_as_missed_and_is_refused() -> None:
    change = domain.accept(direct(), "bob", POLICY, later(45))
    assert change.call.status == "ended" and change.call.end_reason == "timeout"
    assert change.refusal is not None and change.refusal.reason == "CALL_ENDED"
    assert types(change) == [events.RING_STOPPED, events.MISSED, events.ENDED]
    assert change.events[0] == Event(events.RING_STOPPED, "alice", ("bob",), reason="timeout")
    assert domain.outcome(change.call) == domain.MISSED


def test_an_answer_just_before_the_deadline_counts() -> None:
    assert domain.accept(direct(), "bob", POLICY, later(44.999)).call.status == "active"


def test_accept_twice_is_idempotent() -> None:
    call = domain.accept(direct(), "bob", POLICY, later(1)).call
    again = domain.accept(call, "bob", POLICY, later(2))
    assert again.call == call and again.events == []


def test_accept_in_a_group_joins_up_to_the_cap() -> None:
    policy = CallPolicy(True, 2, 45, "video")
    call = domain.accept(group(), "bob", policy, later(1)).call
    with refused("CALL_FULL", CONFLICT):
        domain.accept(call, "carol", policy, later(2))


def test_a_lowered_cap_never_evicts_anyone() -> None:
    call = domain.accept(group(), "bob", POLICY, later(1)).call
    tight = CallPolicy(True, 1, 45, "video")
    assert domain.accept(call, "bob", tight, later(2)).call == call  # already in: fine


def test_a_member_added_to_a_group_room_later_can_join() -> None:
    change = domain.accept(group(), "dave", POLICY, later(1))
    assert states(change.call)["dave"] == "joined"
    assert [p.user_id for p in change.call.participants] == ["alice", "bob", "carol", "dave"]


# --- decline -----------------------------------------------------------------------------------


def test_the_callee_declining_a_direct_call_ends_it() -> None:
    change = domain.decline(direct(), "bob", later(2))
    assert change.call.status == "ended" and change.call.end_reason == "declined"
    assert states(change.call) == {"alice": "left", "bob": "declined"}
    assert types(change) == [events.RING_STOPPED, events.DECLINED, events.ENDED]
    assert change.events[0] == Event(events.RING_STOPPED, "bob", ("bob",), reason="declined")
    assert domain.outcome(change.call) == domain.DECLINED


@pytest.mark.parametrize(
    ("user", "reason", "code"),
    [
        ("alice", "CANNOT_DECLINE_OWN_CALL", CONFLICT),
        ("mallory", "NOT_CALL_PARTICIPANT", FORBIDDEN),
    ],
)
def test_who_may_not_decline_a_direct_call(user: str, reason: str, code: grpc.StatusCode) -> None:
    with refused(reason, code):
        domain.decline(direct(), user, later(1))


def test_an_answered_direct_call_cannot_be_declined() -> None:
    call = domain.accept(direct(), "bob", POLICY, later(1)).call
    with refused("CALL_NOT_RINGING", CONFLICT):
        domain.decline(call, "bob", later(2))


def test_a_group_decline_only_stops_that_users_ring() -> None:
    change = domain.decline(group(), "bob", later(1))
    assert change.call.status == "active"
    assert states(change.call)["bob"] == "declined"
    assert change.events == [
        Event(events.DECLINED, "bob", ("bob",)),
        Event(events.RING_STOPPED, "bob", ("bob",), reason="declined"),
    ]
    assert change.call.ringing() == ("carol",)


def test_a_joined_group_participant_must_leave_not_decline() -> None:
    call = domain.accept(group(), "bob", POLICY, later(1)).call
    with refused("ALREADY_JOINED", CONFLICT):
        domain.decline(call, "bob", later(2))


# --- end -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [(None, "cancelled"), ("no_answer", "no_answer")])
def test_the_caller_ending_a_ringing_call(given: str | None, expected: str) -> None:
    change = domain.end(direct(), "alice", given, later(5))
    assert change.call.end_reason == expected
    assert types(change) == [events.RING_STOPPED, events.MISSED, events.ENDED]
    assert change.events[0] == Event(events.RING_STOPPED, "alice", ("bob",), reason="cancelled")


def test_the_callee_ending_a_ringing_call_declines_it() -> None:
    change = domain.end(direct(), "bob", None, later(5))
    assert change.call.end_reason == "declined"
    assert states(change.call)["bob"] == "declined"


def test_either_side_ends_an_answered_direct_call_as_a_hangup() -> None:
    call = domain.accept(direct(), "bob", POLICY, later(2)).call
    change = domain.end(call, "bob", None, later(62))
    assert (change.call.status, change.call.end_reason, change.call.ended_at) == (
        "ended",
        "hangup",
        later(62),
    )
    assert states(change.call) == {"alice": "left", "bob": "left"}
    assert types(change) == [events.ENDED]
    assert domain.outcome(change.call) == domain.COMPLETED


def test_only_the_group_creator_ends_a_group_call_for_everyone() -> None:
    with refused("NOT_CALL_CREATOR", FORBIDDEN):
        domain.end(group(), "bob", None, later(1))
    assert domain.end(group(), "alice", None, later(1)).call.end_reason == "hangup"


def test_a_stranger_cannot_end_a_direct_call() -> None:
    with refused("NOT_CALL_PARTICIPANT", FORBIDDEN):
        domain.end(direct(), "mallory", None, later(1))


def test_an_unknown_end_reason_is_bad_input() -> None:
    with refused("INVALID_END_REASON", grpc.StatusCode.INVALID_ARGUMENT):
        domain.end_reason("bored")
    assert domain.end_reason("no_answer") == "no_answer"


# --- leave -------------------------------------------------------------------------------------


def test_leaving_a_group_call_keeps_it_for_the_others_and_kicks_the_media() -> None:
    call = domain.accept(group(), "bob", POLICY, later(1)).call
    change = domain.leave(call, "bob", later(9))
    assert change.call.status == "active" and states(change.call)["bob"] == "left"
    assert change.call.participant("bob").left_at == later(9)  # type: ignore[union-attr]
    assert types(change) == [events.PARTICIPANT_LEFT] and change.kicked == ["bob"]


def test_the_last_one_out_ends_a_group_call_as_all_left() -> None:
    change = domain.leave(group(), "alice", later(3))
    assert change.call.end_reason == "all_left"
    assert types(change) == [
        events.PARTICIPANT_LEFT,
        events.RING_STOPPED,
        events.MISSED,
        events.ENDED,
    ]
    assert change.events[1] == Event(events.RING_STOPPED, "alice", ("bob", "carol"), reason="ended")
    assert change.kicked == []  # the whole media room goes instead


def test_leaving_a_direct_call_ends_it() -> None:
    assert domain.leave(direct(), "alice", later(1)).call.end_reason == "cancelled"
    answered = domain.accept(direct(), "bob", POLICY, later(1)).call
    assert domain.leave(answered, "bob", later(2)).call.end_reason == "hangup"


def test_only_a_joined_participant_can_leave() -> None:
    with refused("NOT_IN_CALL", CONFLICT):
        domain.leave(group(), "bob", later(1))


# --- time and media ----------------------------------------------------------------------------


def test_expiry_ends_a_ringing_call_as_missed_by_its_caller() -> None:
    change = domain.expire(direct(), later(45))
    assert (change.call.end_reason, change.events[-1].actor) == ("timeout", "alice")
    assert domain.outcome(change.call) == domain.MISSED


def test_media_left_of_the_current_session_is_a_leave() -> None:
    call = domain.accept(direct(), "bob", POLICY, later(2)).call
    assert domain.media_left(call, "bob", later(3), later(30)).call.end_reason == "hangup"


def test_media_left_of_an_older_session_changes_nothing() -> None:
    call = domain.accept(direct(), "bob", POLICY, later(2)).call
    change = domain.media_left(call, "bob", later(1), later(30))
    assert change.call == call and change.events == []


def test_media_left_of_someone_not_joined_changes_nothing() -> None:
    assert domain.media_left(group(), "bob", None, later(3)).events == []


def test_media_room_finished_ends_a_live_call_once() -> None:
    change = domain.media_ended(group(), later(9))
    assert change.call.end_reason == "media_ended"
    assert domain.media_ended(change.call, later(10)).events == []


# --- guards ------------------------------------------------------------------------------------


def test_guards() -> None:
    with refused("CALLS_DISABLED", FORBIDDEN):
        domain.require_enabled(CallPolicy(False, 8, 45, "video"))
    with refused("CALLS_DISABLED", FORBIDDEN):
        domain.require_enabled(None)
    with refused("ROOM_NOT_FOUND", grpc.StatusCode.NOT_FOUND):
        domain.require_member(room_exists=False, is_member=False)
    with refused("NOT_ROOM_MEMBER", FORBIDDEN):
        domain.require_member(room_exists=True, is_member=False)
    with refused("CALL_NOT_FOUND", grpc.StatusCode.NOT_FOUND):
        domain.require_live(None)
    ended = domain.end(direct(), "alice", None, later(1)).call
    with refused("CALL_ENDED", CONFLICT):
        domain.require_live(ended)


def test_only_a_joined_participant_gets_a_media_token() -> None:
    call = direct()
    assert domain.token_holder(call, "alice") == call
    with refused("NOT_CALL_PARTICIPANT", FORBIDDEN):
        domain.token_holder(call, "bob")  # still ringing
