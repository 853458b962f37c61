"""Ringing rules in-process (shared/DESIGN.md, "Ringing done right"): busy under the
"reject" policy, call.ring_stopped for every way a ring ends, group invitations timing
out one by one, and ringing again."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from services.calls import domain
from services.calls.domain import Actor, Call, Event
from services.events import types as events
from tests.unit.test_call_rules import (
    CONFLICT,
    FORBIDDEN,
    POLICY,
    T0,
    direct,
    group,
    later,
    refused,
    start,
    states,
    types,
)

REJECT = replace(POLICY, busy_policy="reject")


def ring_stops(change: domain.Change) -> list[tuple[tuple[str, ...], str | None]]:
    return [(e.recipients, e.reason) for e in change.events if e.type == events.RING_STOPPED]


def start_direct(*, busy: bool, policy: domain.CallPolicy = REJECT) -> domain.Change:
    return start("alice", "bob", policy=policy, callee_busy=busy)


# --- busy ----------------------------------------------------------------------------------


def test_reject_a_busy_callee_ends_the_call_at_once_as_busy() -> None:
    change = start_direct(busy=True)
    call = change.call
    assert (call.status, call.end_reason, call.ended_at) == ("ended", "busy", T0)
    assert call.ringing() == () and call.ring_deadline is None
    assert domain.outcome(call) == domain.MISSED
    # The caller hears it ended, the callee that they missed it; nothing rings.
    assert change.events == [
        Event(events.STARTED, "alice", ()),
        Event(events.RING_STOPPED, "alice", ("bob",), reason="busy"),
        Event(events.MISSED, "alice", ("bob",)),
        Event(events.ENDED, "alice", ("alice",)),
    ]


def test_reject_a_free_callee_rings() -> None:
    change = start_direct(busy=False)
    assert change.call.status == "ringing" and change.call.ringing() == ("bob",)


def test_ring_policy_a_busy_callee_still_rings_call_waiting() -> None:
    change = start_direct(busy=True, policy=POLICY)
    assert change.call.status == "ringing"
    assert types(change) == [events.STARTED, events.INVITE]


def test_busy_applies_to_direct_calls_only() -> None:
    change = start("alice", "bob", "carol", policy=REJECT, callee_busy=True)
    assert change.call.status == "active"


# --- ring_stopped --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("end_reason", "stop_reason"),
    [("cancelled", "cancelled"), ("no_answer", "cancelled")],
)
def test_a_caller_giving_up_stops_the_ring_as_cancelled(end_reason: str, stop_reason: str) -> None:
    change = domain.end(direct(), "alice", end_reason, later(3))
    assert ring_stops(change) == [(("bob",), stop_reason)]


def test_expiry_stops_the_ring_as_timeout() -> None:
    assert ring_stops(domain.expire(direct(), later(45))) == [(("bob",), "timeout")]


def test_a_group_call_ending_stops_every_ring_still_going() -> None:
    call = domain.decline(group("dave"), "bob", later(1)).call  # bob's ring stopped already
    change = domain.end(call, "alice", None, later(4))
    assert ring_stops(change) == [(("carol", "dave"), "ended")]
    assert all(p.ring_deadline is None for p in change.call.participants)


def test_an_answered_call_ending_stops_no_ring() -> None:
    call = domain.accept(direct(), "bob", domain.CallPolicy(True, 8, 45, "video"), later(1)).call
    assert ring_stops(domain.end(call, "alice", None, later(9))) == []


def test_removing_a_ringing_user_stops_their_ring() -> None:
    change = domain.remove(group(), Actor(None), "carol", later(2))
    assert ring_stops(change) == [(("carol",), "ended")]
    assert change.call.ringing() == ("bob",)


def test_a_ringing_user_leaving_the_room_stops_their_ring() -> None:
    change = domain.member_removed(group(), "bob", later(2))
    assert ring_stops(change) == [(("bob",), "ended")]


def test_the_callee_leaving_the_room_of_a_ringing_direct_call_stops_the_ring() -> None:
    change = domain.member_removed(direct(), "bob", later(2))
    assert change.call.status == "ended"
    assert ring_stops(change) == [(("bob",), "cancelled")]


# --- group invitations time out one by one ---------------------------------------------------


def test_group_invitations_are_missed_when_their_window_passes() -> None:
    call = group()
    assert domain.ring_timeouts(call, later(44)).events == []
    change = domain.ring_timeouts(call, later(45))
    assert states(change.call) == {"alice": "joined", "bob": "missed", "carol": "missed"}
    assert change.call.ringing() == () and change.call.status == "active"
    assert change.events == [
        Event(events.RING_STOPPED, "alice", ("bob", "carol"), reason="timeout")
    ]


def test_a_joined_user_has_no_ring_to_time_out() -> None:
    call = domain.accept(group(), "bob", POLICY, later(1)).call
    change = domain.ring_timeouts(call, later(50))
    assert states(change.call)["bob"] == "joined" and ring_stops(change) == [
        (("carol",), "timeout")
    ]


# --- ring again -------------------------------------------------------------------------------


def rung_group() -> Call:
    """A group call in which bob declined, carol's ring timed out and dave joined then left."""
    call = domain.decline(group("dave", "erin"), "bob", later(1)).call
    call = domain.accept(call, "dave", POLICY, later(2)).call
    call = domain.leave(call, "dave", later(3)).call
    return domain.ring_timeouts(call, later(45)).call


def test_ring_again_rings_declined_missed_and_departed_members_afresh() -> None:
    call = rung_group()
    assert states(call) == {
        "alice": "joined",
        "bob": "declined",
        "carol": "missed",
        "dave": "left",
        "erin": "missed",
    }
    members = {"alice", "bob", "carol", "dave", "erin", "frank"}
    change = domain.ring_again(call, "alice", ["bob", "carol", "dave", "frank"], members, later(60))
    assert change.call.ringing() == ("bob", "carol", "dave", "frank")  # frank: new member
    assert change.events == [
        Event(events.INVITE, "alice", ("bob", "carol", "dave", "frank"), ring_until=later(105))
    ]
    # The fresh ring times out on its own clock.
    assert domain.ring_timeouts(change.call, later(104)).events == []
    assert ring_stops(domain.ring_timeouts(change.call, later(105))) == [
        (("bob", "carol", "dave", "frank"), "timeout")
    ]


def test_ring_again_leaves_a_ring_going_on_as_it_is() -> None:
    call = rung_group()
    members = {"alice", "bob", "carol", "dave", "erin"}
    first = domain.ring_again(call, "alice", ["bob"], members, later(60)).call
    again = domain.ring_again(first, "alice", ["bob", "dave"], members, later(70))
    assert again.events == [Event(events.INVITE, "alice", ("dave",), ring_until=later(115))]
    assert again.call.participant("bob") == first.participant("bob")  # the same ring, no new one
    assert domain.ring_again(first, "alice", ["bob"], members, later(70)).events == []


def test_ring_again_refusals_ring_nobody() -> None:
    call = rung_group()
    members = {"alice", "bob", "carol", "dave", "erin"}
    with refused("NOT_GROUP_CALL", CONFLICT):
        domain.ring_again(direct(), "alice", ["bob"], {"alice", "bob"}, later(1))
    with refused("NOT_ROOM_MEMBER", FORBIDDEN):
        domain.ring_again(call, "alice", ["bob", "mallory"], members, later(50))
    with refused("ALREADY_JOINED", CONFLICT):
        domain.ring_again(call, "alice", ["bob", "alice"], members, later(50))
    with refused("NOT_CALL_PARTICIPANT", FORBIDDEN):
        domain.ring_again(call, "bob", ["carol"], members, later(50))  # bob is not in it
    removed = domain.remove(call, Actor(None), "erin", later(50)).call
    with refused("REMOVED_FROM_CALL", FORBIDDEN):
        domain.ring_again(removed, "alice", ["erin"], members, later(51))


# --- ring tokens -------------------------------------------------------------------------


def test_a_ring_token_answers_only_while_its_ring_is_live() -> None:
    call = direct()
    domain.require_ringing(call, "bob", later(44))  # ringing: fine
    answered = domain.accept(call, "bob", POLICY, later(5)).call
    declined = domain.decline(call, "bob", later(5)).call
    for stopped, when in ((answered, later(6)), (declined, later(6)), (call, later(45))):
        with refused("UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED):
            domain.require_ringing(stopped, "bob", when)
    with refused("UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED):
        domain.require_ringing(call, "alice", later(1))  # the caller has no ring


def test_a_group_creator_moderates_only_while_joined() -> None:
    call = domain.accept(group("dave"), "bob", POLICY, later(1)).call
    domain.require_moderator(call, Actor("alice"))
    removed = domain.remove(call, Actor(None), "alice", later(2)).call
    with refused("REMOVED_FROM_CALL", FORBIDDEN):
        domain.require_moderator(removed, Actor("alice"))
    with refused("REMOVED_FROM_CALL", FORBIDDEN):
        domain.end(removed, "alice", None, later(3))
    gone = domain.leave(call, "alice", later(2)).call
    with refused("NOT_IN_CALL", CONFLICT):
        domain.remove(gone, Actor("alice"), "bob", later(3))
    domain.require_moderator(gone, Actor(None))  # the tenant: always
