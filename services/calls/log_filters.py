"""What a call-log or usage request asks for, checked: each bad value is a 400 naming its
field (lowerCamel, as in the query string), before anything is read."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sendsar.calls.v1 import call_log_pb2 as pb
from sendsar.calls.v1 import calls_pb2

from services.common import validation
from services.common.errors import invalid

STATUSES = ("ringing", "active", "ended")
END_REASONS = tuple(v.name for v in calls_pb2.Call.EndReason.DESCRIPTOR.values if v.number)
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 100
USAGE_MAX_DAYS = 366

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def rfc3339(value: str, field: str) -> datetime:
    """An RFC 3339 time ("2026-11-01T00:00:00Z", "2026-11-01T09:30:00.5+01:00"), in UTC;
    fractions finer than a microsecond are cut (PostgreSQL keeps microseconds)."""
    match = _RFC3339.fullmatch(value)
    parsed = None
    if match is not None:
        date, time, fraction, offset = match.groups()
        micros = f".{(fraction or '')[:6]:0<6}"
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            parsed = datetime.fromisoformat(f"{date}T{time}{micros}{offset}").astimezone(UTC)
        except (ValueError, OverflowError):
            parsed = None
    if parsed is None:
        raise invalid(field, "must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z")
    return parsed


def _window(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise invalid("to", "must be after from")


@dataclass(frozen=True)
class Filters:
    """A ListCalls request's filters (all optional, combined with AND)."""

    room_id: str | None = None
    user_id: str | None = None
    status: str | None = None
    end_reason: str | None = None
    start: datetime | None = None  # `from`, inclusive
    end: datetime | None = None  # `to`, exclusive

    @classmethod
    def of(cls, request: pb.ListCallsRequest) -> Filters:
        def given(name: str) -> str | None:
            return str(getattr(request, name)) if request.HasField(name) else None

        room, user, status, reason, start, end = (
            given(n)
            for n in ("room_id", "user_id", "status", "end_reason", "start_time", "end_time")
        )
        filters = cls(
            room_id=validation.resource_id(room, "roomId") if room is not None else None,
            # A guest ("guest:<guestId>") is a participant too.
            user_id=validation.participant_id(user, "userId") if user is not None else None,
            status=validation.one_of(status, "status", STATUSES) if status is not None else None,
            end_reason=(
                validation.one_of(reason, "endReason", END_REASONS) if reason is not None else None
            ),
            start=rfc3339(start, "from") if start is not None else None,
            end=rfc3339(end, "to") if end is not None else None,
        )
        _window(filters.start, filters.end)
        return filters

    def canonical(self) -> str:
        """The filters as one string, the same for the same filters (page tokens sign it)."""
        return json.dumps(
            [
                self.room_id,
                self.user_id,
                self.status,
                self.end_reason,
                self.start.isoformat() if self.start else None,
                self.end.isoformat() if self.end else None,
            ],
            separators=(",", ":"),
        )


def page_size(request: pb.ListCallsRequest) -> int:
    if not request.HasField("page_size"):
        return PAGE_SIZE_DEFAULT
    return validation.int_range(request.page_size, "pageSize", 1, PAGE_SIZE_MAX)


@dataclass(frozen=True)
class Window:
    """A GetUsage request's window on the calls' createdAt: [start, end)."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, request: pb.GetUsageRequest) -> Window:
        raw_start, raw_end = request.start_time, request.end_time
        if not raw_start:
            raise invalid("from", "is required (RFC 3339)")
        if not raw_end:
            raise invalid("to", "is required (RFC 3339)")
        start, end = rfc3339(raw_start, "from"), rfc3339(raw_end, "to")
        _window(start, end)
        if end - start > timedelta(days=USAGE_MAX_DAYS):
            raise invalid("to", f"must be at most {USAGE_MAX_DAYS} days after from")
        return cls(start, end)

    @property
    def days(self) -> int:
        """How many UTC dates the window touches (the cost of a usage query)."""
        last = self.end - timedelta(microseconds=1)
        return (last.date() - self.start.date()).days + 1
