"""Rows to protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from sendsar.calls.v1 import calls_pb2 as pb

from services.calls.store import Snapshot


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def call_to_pb(snap: Snapshot) -> pb.Call:
    c = snap.call
    call = pb.Call(
        id=c.id,
        room_id=c.room_id,
        type=c.type,
        mode=c.mode,
        status=c.status,
        created_by=c.created_by,
        created_at=timestamp(c.created_at),
        answered_at=timestamp(c.answered_at),
        ended_at=timestamp(c.ended_at),
        ring_timeout_seconds=c.ring_timeout_seconds,
    )
    if c.end_reason:
        call.end_reason = c.end_reason
    for p in snap.participants:
        call.participants.add(
            user_id=p.user_id,
            state=p.state,
            joined_at=timestamp(p.joined_at),
            left_at=timestamp(p.left_at),
        )
    return call
