"""Call event types, their NATS subjects and the outbox's wake-up channel."""

from __future__ import annotations

INVITE = "call.invite"
STARTED = "call.started"
ACCEPTED = "call.accepted"
DECLINED = "call.declined"
ENDED = "call.ended"
MISSED = "call.missed"
PARTICIPANT_JOINED = "call.participant_joined"
PARTICIPANT_LEFT = "call.participant_left"
RING_STOPPED = "call.ring_stopped"
KNOCK = "call.knock"  # a guest waits in the lobby
ADMITTED = "call.admitted"  # a guest was let in
DENIED = "call.denied"  # a guest was turned away

ALL = (
    INVITE,
    STARTED,
    ACCEPTED,
    DECLINED,
    ENDED,
    MISSED,
    PARTICIPANT_JOINED,
    PARTICIPANT_LEFT,
    RING_STOPPED,
    KNOCK,
    ADMITTED,
    DENIED,
)

STREAM = "SENDSAR_CALLS"
SUBJECTS = "sendsar.*.calls.>"

# The outbox writer NOTIFYs this channel once per transaction; relays LISTEN on it.
NOTIFY_CHANNEL = "sendsar_outbox"


def subject(tenant_id: str, event_type: str) -> str:
    # "call.missed" -> sendsar.<tenant>.calls.missed
    return f"sendsar.{tenant_id}.calls.{event_type.removeprefix('call.')}"


def tenant_of(subject_: str) -> str | None:
    """The tenant a subject belongs to, or None for a subject outside our scheme."""
    tokens = subject_.split(".")
    if len(tokens) < 4 or tokens[0] != "sendsar" or tokens[2] != "calls" or not tokens[1]:
        return None
    return tokens[1]
