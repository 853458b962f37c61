"""Guests and the lobby, in-process (shared/DESIGN.md, "Guests and the lobby"): knocking,
admitting and denying, who may let guests in, guests against maxParticipants, and guests
in 1:1 calls."""

from __future__ import annotations

from dataclasses import replace

import grpc

from services.calls import domain
from services.calls.domain import Actor, Call
from services.events import types as events
from tests.unit.test_call_rules import (
    CONFLICT,
    FORBIDDEN,
    POLICY,
    direct,
    group,
    later,
    refused,
    states,
    types,
)

GUESTS = replace(POLICY, guests_enabled=True)
OPEN_DOOR = replace(GUESTS, lobby="off")
ANN = "guest:gst_" + "a" * 32


def knocked(call: Call | None = None, policy: domain.CallPolicy = GUESTS) -> Call:
    return domain.knock(call or group(), ANN, "Ann", policy).call


def test_a_guest_waits_in_the_lobby_and_the_joined_hear_the_knock() -> None:
    change = domain.knock(domain.accept(group(), "bob", POLICY, later(1)).call, ANN, "Ann", GUESTS)
    guest = change.call.participant(ANN)
    assert guest is not None and (guest.state, guest.name, guest.guest) == ("waiting", "Ann", True)
    assert change.events == [domain.Event(events.KNOCK, ANN, ("alice", "bob"))]
    assert not guest.ringing  # a guest rings nobody and is rung by nobody


def test_with_the_lobby_off_a_guest_is_let_in_at_once_without_a_knock() -> None:
    change = domain.knock(group(), ANN, "Ann", OPEN_DOOR)
    assert states(change.call)[ANN] == "invited" and change.events == []


def test_guests_need_the_tenant_to_enable_them() -> None:
    with refused("GUESTS_DISABLED", FORBIDDEN):
        domain.knock(group(), ANN, "Ann", POLICY)


def test_the_lobby_holds_at_most_fifty() -> None:
    call = group()
    for i in range(domain.MAX_WAITING_GUESTS):
        call = domain.knock(call, f"guest:gst_{i:032x}", f"g{i}", GUESTS).call
    with refused("LOBBY_FULL", grpc.StatusCode.RESOURCE_EXHAUSTED):
        domain.knock(call, ANN, "Ann", GUESTS)


def test_admit_lets_the_guest_accept_and_join() -> None:
    admitted = domain.admit(knocked(), Actor("alice"), ANN, GUESTS)
    assert admitted.events == [domain.Event(events.ADMITTED, "alice", (ANN, "alice"))]
    assert states(admitted.call)[ANN] == "invited"
    joined = domain.accept(admitted.call, ANN, GUESTS, later(5))
    assert states(joined.call)[ANN] == "joined" and types(joined) == [events.PARTICIPANT_JOINED]
    assert domain.admit(joined.call, Actor(None), ANN, GUESTS).events == []  # idempotent


def test_a_waiting_guest_cannot_accept() -> None:
    with refused("NOT_ADMITTED", CONFLICT):
        domain.accept(knocked(), ANN, GUESTS, later(2))


def test_deny_removes_the_guest_for_good() -> None:
    denied = domain.deny(knocked(), Actor(None), ANN)
    assert states(denied.call)[ANN] == "removed"
    assert denied.events == [domain.Event(events.DENIED, "", (ANN, "alice"))]
    with refused("REMOVED_FROM_CALL", FORBIDDEN):
        domain.accept(denied.call, ANN, GUESTS, later(3))
    with refused("NOT_WAITING", CONFLICT):
        domain.admit(denied.call, Actor(None), ANN, GUESTS)


def test_a_full_call_refuses_the_admit() -> None:
    call = domain.accept(knocked(), "bob", POLICY, later(1)).call
    with refused("CALL_FULL", CONFLICT):
        domain.admit(call, Actor("alice"), ANN, replace(GUESTS, max_participants=2))


def test_who_may_let_a_guest_in() -> None:
    call = domain.accept(knocked(), "bob", POLICY, later(1)).call
    with refused("NOT_CALL_CREATOR", FORBIDDEN):
        domain.admit(call, Actor("bob"), ANN, GUESTS)  # joined, but not the group's creator
    answered = domain.accept(direct(), "bob", POLICY, later(1)).call
    at_door = domain.knock(answered, ANN, "Ann", GUESTS).call
    assert domain.admit(at_door, Actor("bob"), ANN, GUESTS).events  # either side of a 1:1
    with refused("PARTICIPANT_NOT_FOUND", grpc.StatusCode.NOT_FOUND):
        domain.admit(at_door, Actor(None), "bob", GUESTS)  # only guests are let in


def test_a_guest_never_answers_a_ringing_direct_call_and_never_ends_one() -> None:
    ringing = domain.admit(
        domain.knock(direct(), ANN, "Ann", GUESTS).call, Actor(None), ANN, GUESTS
    )
    with refused("CALL_NOT_ANSWERED", CONFLICT):
        domain.accept(ringing.call, ANN, GUESTS, later(2))
    answered = domain.accept(ringing.call, "bob", POLICY, later(3)).call
    joined = domain.accept(answered, ANN, GUESTS, later(4)).call
    left = domain.leave(joined, ANN, later(5))
    assert left.call.status == "active" and states(left.call)[ANN] == "left"
    removed = domain.remove(joined, Actor(None), ANN, later(5))
    assert removed.call.status == "active" and states(removed.call)[ANN] == "removed"


def test_a_link_is_made_by_the_calls_creator_while_joined_or_the_tenant() -> None:
    call = group()
    domain.require_link_maker(call, Actor("alice"))
    domain.require_link_maker(call, Actor(None))
    with refused("NOT_CALL_CREATOR", FORBIDDEN):
        domain.require_link_maker(call, Actor("bob"))
    gone = domain.remove(call, Actor(None), "alice", later(1)).call
    with refused("REMOVED_FROM_CALL", FORBIDDEN):
        domain.require_link_maker(gone, Actor("alice"))
