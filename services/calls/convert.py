"""Domain calls to protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from sendsar.calls.v1 import calls_pb2 as pb

from services.calls.domain import Call


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def call_to_pb(call: Call) -> pb.Call:
    message = pb.Call(
        id=call.id,
        room_id=call.room_id,
        type=call.type,
        mode=call.mode,
        status=call.status,
        created_by=call.created_by,
        created_at=timestamp(call.created_at),
        answered_at=timestamp(call.answered_at),
        ended_at=timestamp(call.ended_at),
        end_reason=call.end_reason,  # the enum's value names are the reasons
        ring_timeout_seconds=call.ring_timeout_seconds,
    )
    if call.custom is not None:
        message.custom.update(call.custom)
    for p in call.participants:
        added = message.participants.add(
            user_id=p.user_id,
            state=p.state,
            joined_at=timestamp(p.joined_at),
            left_at=timestamp(p.left_at),
        )
        if p.guest:
            added.guest = True
            added.name = p.name or ""
    return message
