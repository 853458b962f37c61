"""Call history: one `data-call` message in the room timeline per ended call."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from sendsar.chat.v1 import chat_pb2

from services.calls.convert import timestamp
from services.calls.domain import Call, outcome


def record(call: Call) -> chat_pb2.CallRecord:
    duration = 0
    if call.answered_at is not None and call.ended_at is not None:
        duration = max(0, round((call.ended_at - call.answered_at).total_seconds()))
    record = chat_pb2.CallRecord(
        call_id=call.id,
        type=call.type,
        mode=call.mode,
        outcome=outcome(call),
        end_reason=call.end_reason,
        initiator=call.created_by,
        participants=[p.user_id for p in call.participants if p.ever_joined],
        started_at=timestamp(call.created_at),
        answered_at=timestamp(call.answered_at),
        ended_at=timestamp(call.ended_at),
        duration_seconds=duration,
    )
    for p in call.participants:
        if p.guest and p.ever_joined:
            record.guests.add(user_id=p.user_id, name=p.name or "")
    if call.custom is not None:
        record.custom.update(call.custom)
    return record


def parts(call: Call) -> list[dict[str, Any]]:
    """The history message's parts, as the chat timeline stores them (JSON)."""
    part = chat_pb2.Part(type="data-call", data=record(call))
    return [json_format.MessageToDict(part)]
