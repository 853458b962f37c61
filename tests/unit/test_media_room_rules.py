"""Which calls have a LiveKit room to delete (services/calls/domain.py), in-process: only
those LiveKit told us of a room for, at their end; a room reported for an ended call at
once; a listed room of ours that no live call has. No database, milliseconds each."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.calls import domain
from services.calls.domain import Actor, Call, Change
from services.common.errors import ServiceError
from services.common.models import new_id
from tests.unit.test_call_rules import POLICY, direct, group, later

GRACE = timedelta(seconds=60)


def used(call: Call) -> Call:
    """The call after LiveKit's participant_joined for its caller."""
    return domain.media_joined(call, "alice").call


def answered() -> Call:
    return domain.accept(direct(), "bob", POLICY, later(2)).call


# Every way a call ends, from the state it ends in.
ENDINGS = {
    "cancelled": lambda c: domain.end(c, "alice", None, later(5)),
    "declined": lambda c: domain.decline(c, "bob", later(5)),
    "timeout": lambda c: domain.expire(c, later(45)),
    "removed": lambda c: domain.remove(c, Actor(None), "bob", later(5)),
}
ACTIVE_ENDINGS = {
    "hangup": lambda c: domain.end(c, "alice", None, later(9)),
    "left": lambda c: domain.leave(c, "bob", later(9)),
    "no_media": lambda c: domain.no_media(c, later(70)),
    "media_ended": lambda c: domain.media_ended(c, later(9)),
    "by_host": lambda c: domain.end_by_host(c, later(9)),
    "member_removed": lambda c: domain.member_removed(c, "bob", later(9)),
}


def test_a_new_call_has_no_media_room() -> None:
    assert not direct().media_used and not group().media_used


@pytest.mark.parametrize("how", sorted(ENDINGS))
def test_a_ringing_call_ending_with_no_media_room_deletes_nothing(how: str) -> None:
    change: Change = ENDINGS[how](direct())
    assert change.call.status == "ended"
    assert not change.delete_room


@pytest.mark.parametrize("how", sorted(ENDINGS))
def test_a_ringing_call_whose_caller_joined_media_deletes_its_room(how: str) -> None:
    change: Change = ENDINGS[how](used(direct()))
    assert change.call.status == "ended" and change.delete_room


@pytest.mark.parametrize("how", sorted(ACTIVE_ENDINGS))
def test_an_active_call_deletes_its_room_only_when_media_was_used(how: str) -> None:
    unused: Change = ACTIVE_ENDINGS[how](answered())
    assert unused.call.status == "ended" and not unused.delete_room
    joined: Change = ACTIVE_ENDINGS[how](used(answered()))
    assert joined.call.status == "ended" and joined.delete_room


def test_a_busy_call_has_nothing_to_delete() -> None:
    change = domain.new_call(
        call_id="call_1",
        tenant_id="tn_1",
        room_id="rm_1",
        members=["alice", "bob"],
        user_id="alice",
        call_type=None,
        policy=domain.CallPolicy(True, 8, 45, "video", busy_policy="reject"),
        now=later(0),
        callee_busy=True,
    )
    assert change.call.status == "ended" and not change.delete_room


def test_a_join_marks_the_room_and_stops_the_no_media_clock() -> None:
    call = answered()
    assert call.media_deadline is not None
    change = domain.media_joined(call, "bob")
    assert change.call.media_used and change.call.media_deadline is None
    assert not change.delete_room and change.events == []


def test_a_join_of_a_stranger_marks_the_room_and_takes_the_stranger_out() -> None:
    change = domain.media_joined(answered(), "mallory")
    assert change.call.media_used and change.call.media_deadline is not None
    assert change.kicked == ["mallory"] and change.events == []


def group_with_bob(call_type: str = "audio") -> Call:
    """Alice's group call with carol, answered by bob."""
    call = domain.new_call(
        call_id="call_g",
        tenant_id="t",
        room_id="r",
        members=["alice", "bob", "carol"],
        user_id="alice",
        call_type=call_type,
        policy=POLICY,
        now=later(0),
    ).call
    return domain.accept(call, "bob", POLICY, later(1)).call


def group_with_bob_gone(how: str) -> Call:
    call = group_with_bob()
    if how == "removed":
        return domain.remove(call, Actor(None), "bob", later(2)).call
    return domain.leave(call, "bob", later(2)).call


@pytest.mark.parametrize("how", ["removed", "left"])
def test_a_participant_no_longer_joined_is_taken_out_of_the_media_and_changes_nothing(
    how: str,
) -> None:
    call = group_with_bob_gone(how)
    change = domain.media_joined(call, "bob")
    assert change.kicked == ["bob"] and change.events == []
    assert change.call.participants == call.participants
    assert change.call.media_deadline == call.media_deadline  # bob's presence is no one's


@pytest.mark.parametrize("how", ["removed", "left"])
def test_reconciliation_suspects_a_room_only_where_someone_could_come_back(how: str) -> None:
    assert not domain.may_return(answered())
    gone = group_with_bob_gone(how)
    assert domain.may_return(gone)
    assert domain.media_intruders(gone, ["alice", "bob", "mallory"]) == ["bob", "mallory"]
    assert domain.media_intruders(gone, ["alice"]) == []


@pytest.mark.parametrize("user", ["bob", "mallory"])
def test_a_room_reported_after_the_end_is_deleted_at_once(user: str) -> None:
    ended = domain.end(answered(), "alice", None, later(9)).call
    assert not ended.media_used
    change = domain.media_joined(ended, user)
    assert change.delete_room and change.call.status == "ended"
    assert change.events == [] and change.call.participants == ended.participants


def test_reconciliation_seeing_someone_in_the_room_marks_it() -> None:
    change = domain.media_occupancy(answered(), True, GRACE, later(5))
    assert change.call.media_used and change.call.media_deadline is None
    empty = domain.media_occupancy(answered(), False, GRACE, later(5))
    assert not empty.call.media_used


def test_our_rooms_are_told_by_their_call_id_name() -> None:
    assert domain.is_call_room(new_id("call"))
    for name in ("call_no_such_room", "room-1", "", new_id("room"), new_id("call") + "x"):
        assert not domain.is_call_room(name), name


def test_rooms_without_a_live_call_are_those_of_ours_not_live() -> None:
    live, ended, unknown = new_id("call"), new_id("call"), new_id("call")
    listed = [live, ended, unknown, "someone-elses-room", "call_test"]
    assert domain.rooms_without_live_call(listed, {live}, 10) == sorted([ended, unknown])
    assert domain.rooms_without_live_call([live], {live}, 10) == []


def test_a_reconciliation_pass_deletes_a_bounded_number_of_rooms() -> None:
    stale = sorted(new_id("call") for _ in range(5))
    assert domain.rooms_without_live_call(stale, set(), 2) == stale[:2]
    assert domain.rooms_without_live_call(stale[2:], set(), 2) == stale[2:4]  # next pass


# --- a moderator's mutes --------------------------------------------------------------


def muted_bob(kind: domain.MuteKind = "audio") -> Call:
    return domain.mute(answered(), Actor(None), "bob", kind).call


def test_a_mute_is_kept_with_the_participant_and_sends_no_event() -> None:
    change = domain.mute(answered(), Actor(None), "bob", "audio")
    assert change.events == [] and not change.kicked
    bob = change.call.participant("bob")
    assert bob is not None and bob.muted == ("audio",)
    both = domain.mute(change.call, Actor(None), "bob", "video").call.participant("bob")
    assert both is not None and both.muted == ("audio", "video")
    alice = change.call.participant("alice")
    assert alice is not None and alice.muted == ()


def test_a_muted_participants_new_media_connection_is_muted_again() -> None:
    change = domain.media_joined(muted_bob(), "bob")
    assert change.remuted == ["bob"] and not change.kicked
    assert domain.media_joined(answered(), "bob").remuted == []  # nothing to enforce


def test_a_mute_ends_when_the_participant_leaves_the_call() -> None:
    call = domain.mute(group_with_bob("video"), Actor(None), "bob", "video").call
    call = domain.accept(call, "bob", POLICY, later(2)).call  # again: still muted
    assert call.participant("bob").muted == ("video",)  # type: ignore[union-attr]
    left = domain.leave(call, "bob", later(3)).call
    back = domain.accept(left, "bob", POLICY, later(4)).call
    assert back.participant("bob").muted == ()  # type: ignore[union-attr]


def test_only_a_joined_participant_can_be_muted() -> None:
    with pytest.raises(ServiceError) as refused:
        domain.mute(group_with_bob_gone("left"), Actor(None), "bob", "audio")
    assert refused.value.reason == "NOT_IN_CALL"
