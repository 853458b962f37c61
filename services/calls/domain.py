"""The call state machine as pure functions: no I/O, no SQL, no clock.

Each transition takes the state loaded under the call's row lock (the call, the
tenant's call policy, the caller's membership) and the database's `now`, and returns
a `Change`: the call as it is afterwards plus the events to emit. A refusal raises
`ServiceError` with its stable reason. The store persists a Change; the unit of work
(transitions.py) runs load → apply → save → after-commit jobs.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import grpc

from services.common import validation
from services.common.errors import (
    ServiceError,
    conflict,
    forbidden,
    invalid,
    not_found,
    unauthenticated,
)
from services.events import types as events

Status = Literal["ringing", "active", "ended"]
Mode = Literal["direct", "group"]
State = Literal["invited", "joined", "declined", "left", "missed", "removed", "waiting"]
MuteKind = Literal["audio", "video"]

LIVE: tuple[Status, ...] = ("ringing", "active")
# Reasons a caller may give when ending a ringing 1:1 call.
CALLER_END_REASONS = ("cancelled", "no_answer")

COMPLETED, MISSED, DECLINED = "completed", "missed", "declined"

# Why a user's ring stopped (call.ring_stopped), for an end reason of the call.
_RING_STOP = {
    "declined": "declined",
    "cancelled": "cancelled",
    "no_answer": "cancelled",
    "timeout": "timeout",
    "busy": "busy",
}
RING_AGAIN_MAX = 100  # users per ring-again request

# Guests (people outside the tenant's app, in through a call link) are participants whose
# user id is this prefix and their guest id; app users' ids may not start with it.
GUEST_PREFIX = validation.GUEST_PREFIX
MAX_WAITING_GUESTS = 50  # guests in a call's lobby at once


@dataclass(frozen=True)
class Participant:
    user_id: str
    state: State
    joined_at: datetime | None = None
    left_at: datetime | None = None
    ever_joined: bool = False
    # While this user's devices ring: when the ring stops unless answered.
    ring_deadline: datetime | None = None
    name: str | None = None  # a guest's name, as they gave it
    # A moderator's mutes: what the participant may not publish until they leave the call
    # (tokens are minted without it, and a new media connection has it taken away again).
    muted_audio: bool = False
    muted_video: bool = False

    @property
    def guest(self) -> bool:
        return is_guest(self.user_id)

    @property
    def muted(self) -> tuple[MuteKind, ...]:
        kinds: tuple[tuple[MuteKind, bool], ...] = (
            ("audio", self.muted_audio),
            ("video", self.muted_video),
        )
        return tuple(kind for kind, on in kinds if on)

    @property
    def ringing(self) -> bool:
        return self.state == "invited" and self.ring_deadline is not None


@dataclass(frozen=True)
class Call:
    id: str
    tenant_id: str
    room_id: str
    type: str
    mode: Mode
    status: Status
    created_by: str
    created_at: datetime
    ring_timeout_seconds: int
    livekit_room: str
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    ring_deadline: datetime | None = None
    # When a live call nobody is in (by LiveKit's account) ends as `no_media`; None while
    # someone is in its media room.
    media_deadline: datetime | None = None
    custom: dict[str, Any] | None = None  # the integrator's own data, given at start
    # Participants in user-id order.
    participants: tuple[Participant, ...] = ()
    # LiveKit told us the call's media room exists (a participant_joined webhook, or
    # reconciliation seeing someone in it). LiveKit creates a room at the first join, so
    # only such a call has a room to delete when it ends.
    media_used: bool = False

    def participant(self, user_id: str) -> Participant | None:
        return next((p for p in self.participants if p.user_id == user_id), None)

    def muted(self, user_id: str) -> tuple[MuteKind, ...]:
        """What a moderator muted of this user's (nothing for a user not in the call)."""
        participant = self.participant(user_id)
        return participant.muted if participant else ()

    def audience(self) -> tuple[str, ...]:
        """Who receives the call's events: every participant but those removed from it."""
        return tuple(p.user_id for p in self.participants if p.state != "removed")

    def joined(self) -> list[str]:
        return [p.user_id for p in self.participants if p.state == "joined"]

    def ringing(self) -> tuple[str, ...]:
        """Users whose devices ring for this call now."""
        return tuple(p.user_id for p in self.participants if p.ringing)

    @property
    def live(self) -> bool:
        return self.status != "ended"


@dataclass(frozen=True)
class CallPolicy:
    """The tenant's call settings in force for this transition."""

    enabled: bool
    max_participants: int
    ring_timeout_seconds: int
    default_type: str
    # How long a live call may go with nobody in its media room (CALL_MEDIA_GRACE_SECONDS).
    media_grace: timedelta = timedelta(seconds=60)
    # A 1:1 callee already joined in another live call: "ring" (call waiting) or "reject".
    busy_policy: str = "ring"
    # Guests may knock through call links; "host": they wait until admitted, "off": not.
    guests_enabled: bool = False
    lobby: str = "host"


@dataclass(frozen=True)
class RoomRef:
    """The room a request names, of a tenant."""

    tenant: str
    room: str


@dataclass(frozen=True)
class CallRef(RoomRef):
    """The call a request names, in its room."""

    call: str


@dataclass(frozen=True)
class Actor:
    """Who asks for a moderation action: an app user, or the tenant itself (API key)."""

    user_id: str | None  # None for the tenant

    @property
    def host(self) -> bool:
        return self.user_id is None


@dataclass(frozen=True)
class Event:
    type: str
    actor: str  # the user whose action or state the event is about ("" for the tenant)
    recipients: tuple[str, ...]  # users whose sockets receive it
    reason: str | None = None
    # call.invite: the recipients' ring deadline (their ring tokens expire with it).
    ring_until: datetime | None = None


@dataclass
class Change:
    """What a transition did: the call afterwards and the events to write with it."""

    call: Call
    events: list[Event] = field(default_factory=list)
    # The caller gets this error although the change stands (e.g. a too-late answer
    # that ended the call as missed): raised after commit.
    refusal: ServiceError | None = None
    # Users to disconnect from the media room after commit.
    kicked: list[str] = field(default_factory=list)
    # Users whose mutes the media room is to enforce (again) after commit: a muted
    # participant's new media connection has its token's grants until then.
    remuted: list[str] = field(default_factory=list)
    # The call's media room is to be deleted after commit (marked in the same write, so
    # a retry sweep finds it if this process cannot).
    delete_room: bool = False


# --- guards -------------------------------------------------------------------------


def require_enabled(policy: CallPolicy | None) -> CallPolicy:
    if policy is None or not policy.enabled:
        raise forbidden("CALLS_DISABLED", "calls are disabled for this account")
    return policy


def require_tenant(policy: CallPolicy | None) -> CallPolicy:
    """The tenant's policy, whether its calls are enabled or not."""
    if policy is None:
        raise forbidden("CALLS_DISABLED", "calls are disabled for this account")
    return policy


def require_member(room_exists: bool, is_member: bool) -> None:
    if not room_exists:
        raise not_found("ROOM_NOT_FOUND", "room not found")
    if not is_member:
        raise forbidden("NOT_ROOM_MEMBER", "you are not a member of this room")


def require_live(call: Call | None) -> Call:
    if call is None:
        raise not_found("CALL_NOT_FOUND", "call not found in this room")
    if call.status == "ended":
        raise conflict("CALL_ENDED", "the call has ended")
    return call


def end_reason(reason: str | None) -> str | None:
    """Validates the reason a caller gives with `end` (before anything is loaded)."""
    if reason is not None and reason not in CALLER_END_REASONS:
        raise invalid("reason", "must be 'cancelled' or 'no_answer'", reason="INVALID_END_REASON")
    return reason


def _not_participant() -> ServiceError:
    return forbidden("NOT_CALL_PARTICIPANT", "this 1:1 call is between two other users")


def _not_removed(call: Call, user_id: str) -> None:
    participant = call.participant(user_id)
    if participant is not None and participant.state == "removed":
        raise forbidden("REMOVED_FROM_CALL", "you were removed from this call")


# --- small state edits ------------------------------------------------------------------


def _set(
    call: Call, user_id: str, state: State, now: datetime, ring_until: datetime | None = None
) -> Call:
    """The call with one participant moved to `state` (added when new, e.g. a late member).
    Any state change stops the user's ring, except to `invited` until `ring_until`."""
    old = call.participant(user_id) or Participant(user_id, "invited")
    if state == "joined":
        new = replace(
            old, state=state, joined_at=now, left_at=None, ever_joined=True, ring_deadline=None
        )
    elif state == "left" or (state == "removed" and old.state == "joined"):
        # Leaving ends the user's time in the call, and with it a moderator's mutes.
        new = replace(
            old,
            state=state,
            left_at=now,
            ring_deadline=None,
            muted_audio=False,
            muted_video=False,
        )
    else:
        new = replace(old, state=state, ring_deadline=ring_until)
    return _with(call, new)


def _with(call: Call, participant: Participant) -> Call:
    """The call with `participant` in place of the one of that user id (or added)."""
    rest = [p for p in call.participants if p.user_id != participant.user_id]
    return replace(call, participants=tuple(sorted([*rest, participant], key=lambda p: p.user_id)))


def outcome(call: Call) -> str:
    """The history outcome of an ended call."""
    if call.end_reason == "declined":
        return DECLINED
    return COMPLETED if call.answered_at is not None else MISSED


def _ring_stopped(users: Sequence[str], reason: str, actor: str) -> list[Event]:
    """call.ring_stopped to the users whose ring stopped (none: no event)."""
    return [Event(events.RING_STOPPED, actor, tuple(users), reason=reason)] if users else []


def _finish(
    call: Call,
    reason: str,
    actor: str,
    now: datetime,
    events_before: Sequence[Event] = (),
    stopped: Sequence[str] | None = None,
) -> Change:
    """Ends the call for everyone: every joined participant leaves, every ring stops (the
    users of `stopped`, by default those still ringing), history is written."""
    stopped = call.ringing() if stopped is None else stopped
    people = tuple(
        replace(p, state="left", left_at=now, ring_deadline=None)
        if p.state == "joined"
        else replace(p, ring_deadline=None)
        for p in call.participants
    )
    ended = replace(
        call,
        status="ended",
        ended_at=now,
        end_reason=reason,
        ring_deadline=None,
        media_deadline=None,
        participants=people,
    )
    everyone = ended.audience()
    emitted = [*events_before, *_ring_stopped(stopped, _RING_STOP.get(reason, "ended"), actor)]
    if reason == "declined":
        emitted.append(Event(events.DECLINED, actor, everyone))
    if outcome(ended) == MISSED:
        emitted.append(Event(events.MISSED, actor, everyone))
    emitted.append(Event(events.ENDED, actor, everyone))
    # No room was ever reported: nothing to delete (a late join still gets it deleted:
    # media_joined).
    return Change(ended, emitted, delete_room=call.media_used)


# --- transitions ------------------------------------------------------------------------


def new_call(
    *,
    call_id: str,
    tenant_id: str,
    room_id: str,
    members: Sequence[str],
    user_id: str,
    call_type: str | None,
    policy: CallPolicy,
    now: datetime,
    custom: dict[str, Any] | None = None,
    callee_busy: bool = False,
) -> Change:
    """A call in a room with no live call: 1:1 rings, a group is active at once.

    `callee_busy`: the 1:1 callee is joined in another live call (looked up under the
    tenant's "reject" busy policy only); then the call ends at once as `busy`."""
    if len(members) < 2:
        raise conflict("ROOM_TOO_SMALL", "a call needs a room with at least two members")
    direct = len(members) == 2
    others = tuple(m for m in members if m != user_id)
    ring_until = now + timedelta(seconds=policy.ring_timeout_seconds)
    people = sorted(
        [Participant(user_id, "joined", joined_at=now, ever_joined=True)]
        + [Participant(u, "invited", ring_deadline=ring_until) for u in others],
        key=lambda p: p.user_id,
    )
    call = Call(
        id=call_id,
        tenant_id=tenant_id,
        room_id=room_id,
        type=call_type or policy.default_type,
        mode="direct" if direct else "group",
        status="ringing" if direct else "active",
        created_by=user_id,
        created_at=now,
        ring_timeout_seconds=policy.ring_timeout_seconds,
        ring_deadline=ring_until if direct else None,
        media_deadline=None if direct else now + policy.media_grace,
        custom=custom,
        livekit_room=call_id,  # one LiveKit room per call, never reused
        participants=tuple(people),
    )
    started = Event(events.STARTED, user_id, ())
    if direct and callee_busy and policy.busy_policy == "reject":
        return _busy(call, started, now)
    return Change(call, [started, Event(events.INVITE, user_id, others, ring_until=ring_until)])


def _busy(call: Call, started: Event, now: datetime) -> Change:
    """A 1:1 call whose callee is in another call (busy policy "reject"): over before it
    rings. The caller's devices hear it ended, the callee's that they missed it."""
    caller = call.created_by
    [callee] = [p.user_id for p in call.participants if p.user_id != caller]
    change = _finish(call, "busy", caller, now)
    audience = {events.ENDED: (caller,), events.MISSED: (callee,)}
    change.events = [started] + [
        replace(e, recipients=audience.get(e.type, e.recipients)) for e in change.events
    ]
    return change


def join_live(call: Call, user_id: str, policy: CallPolicy, now: datetime) -> Change:
    """Start in a room that has a live call: rejoin it, or accept it as the callee (glare)."""
    _not_removed(call, user_id)
    if call.mode == "direct" and call.status == "ringing":
        if user_id == call.created_by:
            return Change(call)  # the caller's other device
        return _answer(call, user_id, policy, now)
    return _join(call, user_id, policy, now)


def _answer(call: Call, user_id: str, policy: CallPolicy, now: datetime) -> Change:
    if call.participant(user_id) is None:  # e.g. added to the room while it rang
        raise _not_participant()
    if call.ring_deadline is not None and call.ring_deadline <= now:
        # The sweep has not reached it yet: too late all the same; the deadline is the rule.
        change = _finish(call, "timeout", call.created_by, now)
        change.refusal = conflict("CALL_ENDED", "the call has ended")
        return change
    active = replace(
        call,
        status="active",
        answered_at=now,
        ring_deadline=None,
        media_deadline=now + policy.media_grace,
    )
    answered = _set(active, user_id, "joined", now)
    return Change(
        answered,
        [
            Event(events.ACCEPTED, user_id, answered.audience()),
            *_ring_stopped(call.ringing(), "accepted", user_id),
        ],
    )


def _join(call: Call, user_id: str, policy: CallPolicy, now: datetime) -> Change:
    participant = call.participant(user_id)
    if participant is not None and participant.state == "joined":
        return Change(call)  # idempotent: another device, or a retry
    if call.mode == "direct" and participant is None:
        raise _not_participant()
    if len(call.joined()) >= policy.max_participants:
        raise conflict(
            "CALL_FULL", f"the call has reached its {policy.max_participants} participants"
        )
    joined = _set(call, user_id, "joined", now)
    if joined.answered_at is None and user_id != call.created_by:
        joined = replace(joined, answered_at=now)
    was_ringing = participant is not None and participant.ringing
    return Change(
        joined,
        [
            Event(events.PARTICIPANT_JOINED, user_id, joined.audience()),
            *_ring_stopped((user_id,) if was_ringing else (), "accepted", user_id),
        ],
    )


def accept(call: Call, user_id: str, policy: CallPolicy, now: datetime) -> Change:
    _not_removed(call, user_id)
    if is_guest(user_id):
        return _guest_joins(call, user_id, policy, now)
    if call.mode == "direct":
        if user_id == call.created_by:
            raise conflict("CANNOT_ACCEPT_OWN_CALL", "you started this call")
        if call.status == "ringing":
            return _answer(call, user_id, policy, now)
    return _join(call, user_id, policy, now)


def decline(call: Call, user_id: str, now: datetime) -> Change:
    _not_removed(call, user_id)
    participant = call.participant(user_id)
    if call.mode == "direct":
        if user_id == call.created_by:
            raise conflict(
                "CANNOT_DECLINE_OWN_CALL", "you started this call; end it with reason 'cancelled'"
            )
        if participant is None:
            raise _not_participant()
        if call.status != "ringing":
            raise conflict("CALL_NOT_RINGING", "the call was already answered; end it instead")
        return _decline_direct(call, user_id, now)
    # Group: only this user's invitation; their other devices stop ringing.
    if participant is not None and participant.state == "joined":
        raise conflict("ALREADY_JOINED", "you are in this call; leave it instead")
    declined = _set(call, user_id, "declined", now) if participant is not None else call
    was_ringing = participant is not None and participant.ringing
    return Change(
        declined,
        [
            Event(events.DECLINED, user_id, (user_id,)),
            *_ring_stopped((user_id,) if was_ringing else (), "declined", user_id),
        ],
    )


def _decline_direct(call: Call, user_id: str, now: datetime) -> Change:
    declined = _set(call, user_id, "declined", now)
    return _finish(declined, "declined", user_id, now, stopped=call.ringing())


def end_by_host(call: Call, now: datetime) -> Change:
    """The tenant (API key) ends any call."""
    return _finish(call, "ended_by_host", "", now)


def end(call: Call, user_id: str, reason: str | None, now: datetime) -> Change:
    if call.mode == "group":
        if user_id != call.created_by:
            raise forbidden(
                "NOT_CALL_CREATOR", "only the call's creator can end it for everyone; use leave"
            )
        _require_joined_creator(call, user_id)
        return _finish(call, "hangup", user_id, now)
    if call.participant(user_id) is None:
        raise forbidden("NOT_CALL_PARTICIPANT", "you are not in this call")
    if call.status == "ringing":
        if user_id != call.created_by:  # the callee hanging up a ringing call declines it
            return _decline_direct(call, user_id, now)
        return _finish(call, reason or "cancelled", user_id, now)
    return _finish(call, "hangup", user_id, now)


def leave(call: Call, user_id: str, now: datetime) -> Change:
    participant = call.participant(user_id)
    if participant is None or participant.state != "joined":
        raise conflict("NOT_IN_CALL", "you have not joined this call")
    return _leave(call, user_id, now)


def _leave(call: Call, user_id: str, now: datetime) -> Change:
    if call.mode == "direct" and not is_guest(user_id):  # it cannot go on with one side gone
        return _finish(call, "cancelled" if call.status == "ringing" else "hangup", user_id, now)
    left = _set(call, user_id, "left", now)
    event = Event(events.PARTICIPANT_LEFT, user_id, left.audience())
    if not left.joined():
        return _finish(left, "all_left", user_id, now, events_before=[event])
    return Change(left, [event], kicked=[user_id])


def expire(call: Call, now: datetime) -> Change:
    """The ring deadline passed with nobody answering."""
    return _finish(call, "timeout", call.created_by, now)


def ring_timeouts(call: Call, now: datetime) -> Change:
    """Group invitations whose ring window passed: `missed`, and their devices stop."""
    due = tuple(
        p.user_id
        for p in call.participants
        if p.ringing and p.ring_deadline is not None and p.ring_deadline <= now
    )
    if call.status != "active" or not due:
        return Change(call)
    missed = call
    for user_id in due:
        missed = _set(missed, user_id, "missed", now)
    return Change(missed, _ring_stopped(due, "timeout", call.created_by))


def ring_again(
    call: Call, user_id: str, targets: Sequence[str], members: Collection[str], now: datetime
) -> Change:
    """A participant of a group call rings room members who are not in it again: each
    gets a fresh call.invite and ring window. All or nothing: one bad target refuses all."""
    if call.mode == "direct":
        raise conflict("NOT_GROUP_CALL", "only the members of a group call can be rung again")
    me = call.participant(user_id)
    if me is None or me.state != "joined":
        raise forbidden("NOT_CALL_PARTICIPANT", "only a participant in the call can ring others")
    for target in targets:
        if target not in members:
            raise forbidden("NOT_ROOM_MEMBER", f"'{target}' is not a member of this room")
        participant = call.participant(target)
        if participant is not None and participant.state == "removed":
            raise forbidden("REMOVED_FROM_CALL", f"'{target}' was removed from this call")
        if participant is not None and participant.state == "joined":
            raise conflict("ALREADY_JOINED", f"'{target}' is in the call")
    # Whoever is still ringing keeps the ring they have: one call.invite per ring.
    ringing = set(call.ringing())
    again = tuple(target for target in targets if target not in ringing)
    if not again:
        return Change(call)
    ring_until = now + timedelta(seconds=call.ring_timeout_seconds)
    rung = call
    for target in again:
        rung = _set(rung, target, "invited", now, ring_until=ring_until)
    return Change(rung, [Event(events.INVITE, user_id, again, ring_until=ring_until)])


def media_left(call: Call, user_id: str, session_started: datetime | None, now: datetime) -> Change:
    """LiveKit says a participant's media session ended: a leave, unless it is stale."""
    participant = call.participant(user_id)
    if call.status == "ended" or participant is None or participant.state != "joined":
        return Change(call)
    # A media session that began before the user's latest join is an old one (a late or
    # redelivered webhook): its end says nothing about the current one.
    if (
        session_started is not None
        and participant.joined_at is not None
        and session_started < participant.joined_at
    ):
        return Change(call)
    return _leave(call, user_id, now)


def media_joined(call: Call, user_id: str) -> Change:
    """Someone is in the call's media room, so it exists: a live call's room is deleted
    when the call ends. Media access is the call's truth: only a `joined` participant
    may be in the room, and being there means the call is not a ghost. Anyone else (a
    removed or departed participant back with a token they still hold, which LiveKit
    keeps valid for its 600 s and refreshes while connected) is taken out at once. An
    ended call's room must not outlive it (a media token used after the end, or a
    webhook that lost the race with the end): it goes now."""
    used = replace(call, media_used=True)
    if call.status == "ended":
        return Change(used, delete_room=True)
    participant = call.participant(user_id)
    if participant is None or participant.state != "joined":
        return Change(used, kicked=[user_id])
    # A muted participant connected again (a second device, a token held from before the
    # mute): the new connection has its token's grants until the mutes are applied again.
    return Change(
        replace(used, media_deadline=None), remuted=[user_id] if participant.muted else []
    )


def media_intruders(call: Call, present: Iterable[str]) -> list[str]:
    """Who is in a live call's media room (by LiveKit's account) but not joined in the
    call: reconciliation's findings, each then decided afresh under the call's lock
    (`media_joined`)."""
    joined = set(call.joined())
    return sorted(identity for identity in present if identity not in joined)


def may_return(call: Call) -> bool:
    """Whether someone could be in the media room who should not: a participant who was
    joined once (and so was given a media token) and is not now."""
    return any(p.ever_joined and p.state != "joined" for p in call.participants)


def media_occupancy(call: Call, occupied: bool, grace: timedelta, now: datetime) -> Change:
    """What LiveKit's RoomService says of the media room (reconciliation, when webhooks
    were lost): the no-media clock runs while it is empty, stops while it is not."""
    if call.status != "active":
        return Change(call)
    if occupied:
        return Change(replace(call, media_deadline=None, media_used=True))
    if call.media_deadline is None:
        return Change(replace(call, media_deadline=now + grace))
    return Change(call)


# The name of every media room we make: the call's id (new_call; services.common.models.new_id).
_CALL_ROOM = re.compile(r"call_[0-9a-f]{32}")


def is_call_room(name: str) -> bool:
    """Whether a LiveKit room's name is one of ours (a call id)."""
    return _CALL_ROOM.fullmatch(name) is not None


def rooms_without_live_call(listed: Iterable[str], live: Collection[str], limit: int) -> list[str]:
    """LiveKit's rooms to delete (reconciliation, for lost webhooks): rooms named as ours
    that no live call has, whether its call ended or there is no such call at all, at
    most `limit` of them (a pass stays bounded; the rest are listed again next pass).
    A room of another name is not ours and is left alone."""
    return sorted(name for name in listed if is_call_room(name) and name not in live)[:limit]


def no_media(call: Call, now: datetime) -> Change:
    """Nobody was in the media room for the grace period."""
    return _finish(call, "no_media", call.created_by, now)


def media_ended(call: Call, now: datetime) -> Change:
    """LiveKit finished the media room."""
    if call.status == "ended":
        return Change(call)
    return _finish(call, "media_ended", call.created_by, now)


def require_ringing(call: Call, user_id: str, now: datetime) -> None:
    """A ring token answers only while its user's ring is live: once it stopped (answered
    or declined on another device, cancelled, timed out), the token is worth nothing, as
    if no credential had been given."""
    participant = call.participant(user_id)
    deadline = participant.ring_deadline if participant is not None else None
    if participant is None or not participant.ringing or deadline is None or deadline <= now:
        raise unauthenticated("this ring has stopped")


def token_holder(call: Call, user_id: str) -> Call:
    """Only a current participant gets a fresh media token."""
    _not_removed(call, user_id)
    participant = call.participant(user_id)
    if participant is None or participant.state != "joined":
        raise forbidden("NOT_CALL_PARTICIPANT", "only a current participant can get a media token")
    return call


# --- moderation ---------------------------------------------------------------------------


def require_moderator(call: Call, actor: Actor) -> None:
    """The tenant on any call; a group call's creator on theirs, while joined in it."""
    if actor.host:
        return
    if call.mode == "group" and actor.user_id == call.created_by:
        _require_joined_creator(call, actor.user_id)
        return
    raise forbidden(
        "NOT_CALL_CREATOR", "only the group call's creator or the tenant's API key can do this"
    )


def _require_joined_creator(call: Call, user_id: str) -> None:
    """A creator's powers over the call (end it for all, remove, mute) last while they
    are in it: one removed by the tenant has none, one who left must join again."""
    _not_removed(call, user_id)
    participant = call.participant(user_id)
    if participant is None or participant.state != "joined":
        raise conflict("NOT_IN_CALL", "join the call again to end it for everyone or moderate it")


def require_participant(call: Call, user_id: str) -> Participant:
    participant = call.participant(user_id)
    if participant is None:
        raise not_found("PARTICIPANT_NOT_FOUND", "no such participant in this call")
    return participant


def remove(call: Call, actor: Actor, user_id: str, now: datetime) -> Change:
    """Takes a user out of the call and its media room for good (no rejoin)."""
    require_moderator(call, actor)
    participant = require_participant(call, user_id)
    if participant.state == "removed":
        return Change(call)  # idempotent
    by = actor.user_id or ""
    removed = _set(call, user_id, "removed", now)
    if call.mode == "direct" and not participant.guest:  # it cannot go on without one side
        return _finish(removed, "ended_by_host", by, now, stopped=call.ringing())
    # The removed user's devices hear it too (and nothing of the call after it).
    audience = tuple(sorted({*removed.audience(), user_id}))
    gone = [
        Event(events.PARTICIPANT_LEFT, user_id, audience, reason="removed"),
        *_ring_stopped((user_id,) if participant.ringing else (), "ended", by),
    ]
    if not removed.joined():
        return _finish(removed, "all_left", by, now, events_before=gone)
    return Change(removed, gone, kicked=[user_id])


def mute(call: Call, actor: Actor, user_id: str, kind: MuteKind) -> Change:
    """A moderator mutes a joined participant's tracks of a kind, until that participant
    leaves the call: kept with the participant, so that a new media connection or a
    refreshed token does not undo it (the service applies it in the media room after
    commit). No event of ours: LiveKit tells every client the track is gone."""
    require_moderator(call, actor)
    participant = require_participant(call, user_id)
    if participant.state != "joined":
        raise conflict("NOT_IN_CALL", "that user is not in the call")
    if kind == "audio":
        return Change(_with(call, replace(participant, muted_audio=True)))
    return Change(_with(call, replace(participant, muted_video=True)))


def member_removed(call: Call, user_id: str, now: datetime) -> Change:
    """The user is no longer a member of the call's room: out of its live call for good,
    and told nothing more of it."""
    participant = call.participant(user_id)
    if participant is None or participant.state == "removed":
        return Change(call)
    gone = _set(call, user_id, "removed", now)
    if call.mode == "direct":  # a 1:1 call cannot go on without one side
        reason = "cancelled" if call.status == "ringing" else "hangup"
        return _finish(gone, reason, user_id, now, stopped=call.ringing())
    left = [
        Event(events.PARTICIPANT_LEFT, user_id, gone.audience(), reason="removed"),
        *_ring_stopped((user_id,) if participant.ringing else (), "ended", user_id),
    ]
    if not gone.joined():
        return _finish(gone, "all_left", user_id, now, events_before=left)
    return Change(gone, left, kicked=[user_id] if participant.state == "joined" else [])


# --- guests and the lobby -----------------------------------------------------------------


def is_guest(user_id: str) -> bool:
    return user_id.startswith(GUEST_PREFIX)


def guest_user_id(guest_id: str) -> str:
    return GUEST_PREFIX + guest_id


def require_guests(policy: CallPolicy) -> None:
    if not policy.guests_enabled:
        raise forbidden("GUESTS_DISABLED", "guests are not enabled for this account")


def require_link_maker(call: Call, actor: Actor) -> None:
    """Who may make, list and revoke a call's links: the tenant, or the user who started
    the call while joined in it."""
    if actor.host:
        return
    if actor.user_id != call.created_by:
        raise forbidden(
            "NOT_CALL_CREATOR", "only the call's creator or the tenant's API key can do this"
        )
    _require_joined_creator(call, actor.user_id)


def _require_doorkeeper(call: Call, actor: Actor) -> None:
    """Who may admit or deny a guest: the tenant, the call's creator while joined, or, in
    a 1:1 call, either side while joined."""
    if actor.host:
        return
    user = actor.user_id or ""
    if call.mode == "direct" and not is_guest(user):
        participant = call.participant(user)
        if participant is not None and participant.state == "joined":
            return
    require_moderator(call, actor)


def _require_guest(call: Call, guest: str) -> Participant:
    participant = call.participant(guest)
    if participant is None or not participant.guest:
        raise not_found("PARTICIPANT_NOT_FOUND", "no such guest in this call")
    return participant


def knock(call: Call, guest: str, name: str, policy: CallPolicy) -> Change:
    """A guest, in through a link, asks to join: `waiting` in the lobby (the joined
    participants hear `call.knock`), or `invited` at once when the lobby is off. A guest
    never rings anyone."""
    require_guests(policy)
    if policy.lobby == "off":
        return Change(_add(call, Participant(guest, "invited", name=name)))
    waiting = [p for p in call.participants if p.state == "waiting"]
    if len(waiting) >= MAX_WAITING_GUESTS:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "LOBBY_FULL",
            f"{MAX_WAITING_GUESTS} guests are waiting already; try again later",
        )
    knocked = _add(call, Participant(guest, "waiting", name=name))
    return Change(knocked, [Event(events.KNOCK, guest, tuple(knocked.joined()))])


def _add(call: Call, participant: Participant) -> Call:
    people = sorted([*call.participants, participant], key=lambda p: p.user_id)
    return replace(call, participants=tuple(people))


def admit(call: Call, actor: Actor, guest: str, policy: CallPolicy) -> Change:
    """Lets a waiting guest in (`invited`: they may now accept). Guests count against
    maxParticipants, so a full call refuses."""
    _require_doorkeeper(call, actor)
    participant = _require_guest(call, guest)
    if participant.state in ("invited", "joined"):
        return Change(call)  # idempotent: admitted already
    if participant.state != "waiting":
        raise conflict("NOT_WAITING", "this guest is not waiting to be let in")
    if len(call.joined()) >= policy.max_participants:
        raise conflict(
            "CALL_FULL", f"the call has reached its {policy.max_participants} participants"
        )
    admitted = replace(call, participants=_with_state(call, guest, "invited"))
    return Change(admitted, [Event(events.ADMITTED, actor.user_id or "", _door(call, guest))])


def deny(call: Call, actor: Actor, guest: str) -> Change:
    """Turns a guest away for good: `removed` (that guest session cannot come back)."""
    _require_doorkeeper(call, actor)
    participant = _require_guest(call, guest)
    if participant.state == "removed":
        return Change(call)  # idempotent
    if participant.state not in ("waiting", "invited"):
        raise conflict("ALREADY_JOINED", "this guest has joined; remove them instead")
    denied = replace(call, participants=_with_state(call, guest, "removed"))
    return Change(denied, [Event(events.DENIED, actor.user_id or "", _door(call, guest))])


def _door(call: Call, guest: str) -> tuple[str, ...]:
    """Who hears a guest let in or turned away: the guest, and those who heard the knock
    (so every host's device clears it from its lobby)."""
    return (guest, *call.joined())


def _with_state(call: Call, user_id: str, state: State) -> tuple[Participant, ...]:
    return tuple(replace(p, state=state) if p.user_id == user_id else p for p in call.participants)


def _guest_joins(call: Call, guest: str, policy: CallPolicy, now: datetime) -> Change:
    """A guest's accept: once admitted (or with the lobby off), into a call that has been
    answered (a guest never answers a ringing 1:1 call)."""
    participant = _require_guest(call, guest)
    if participant.state == "waiting":
        raise conflict("NOT_ADMITTED", "you are waiting to be let in")
    if call.status == "ringing":
        raise conflict("CALL_NOT_ANSWERED", "the call has not been answered yet; try again")
    return _join(call, guest, policy, now)
