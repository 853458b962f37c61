"""Call event types and their NATS subjects."""

from __future__ import annotations

INVITE = "call.invite"
STARTED = "call.started"
ACCEPTED = "call.accepted"
DECLINED = "call.declined"
ENDED = "call.ended"
MISSED = "call.missed"
PARTICIPANT_JOINED = "call.participant_joined"
PARTICIPANT_LEFT = "call.participant_left"

ALL = (INVITE, STARTED, ACCEPTED, DECLINED, ENDED, MISSED, PARTICIPANT_JOINED, PARTICIPANT_LEFT)

STREAM = "SENDSAR_CALLS"
SUBJECTS = "sendsar.*.calls.>"


def subject(tenant_id: str, event_type: str) -> str:
    # "call.missed" -> sendsar.<tenant>.calls.missed
    return f"sendsar.{tenant_id}.calls.{event_type.removeprefix('call.')}"
