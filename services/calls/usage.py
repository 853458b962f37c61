"""Usage (`GET /v1/usage`): calls and participant minutes of the calls created in a window.

A participant's time is the time they were `joined` while the call was answered: from
the later of `joined_at` and the call's `answered_at` to `left_at`, or the call's
`ended_at`, or now for a live call; plus `joined_before`, what their earlier joins of
the call already counted that way (a rejoin overwrites `joined_at` and `left_at`; the
call path's write adds the interval it replaces). A call never answered counts nothing.
Sums are exact (intervals in microseconds, seconds as numeric) and rounded once, at the
end, to minutes with two decimals, half up.

One statement, one UTC day at a time: for each day of the window, a count over the
tenant's index on calls (`ix_calls_tenant_created`, which carries type, answer and end
times) and a merge join of that range with the same range of the participants' usage
index (`ix_call_participants_usage`, ordered by the call's (created_at, id) too), both
index-only. No sort, no hash, no row lock: a transition never waits for a usage query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from sendsar.calls.v1 import call_log_pb2 as pb

from services.calls.log_filters import Window

CALL_TYPES = ("audio", "video")

# A participant's time in an answered call `c` (the participant is `p`).
_JOINED_TIME = """p.joined_before
    + greatest(interval '0',
               coalesce(p.left_at, c.ended_at, now()) - greatest(p.joined_at, c.answered_at))"""

USAGE = f"""
SELECT d.day::date AS day, n.calls, n.audio_calls, n.video_calls, n.answered,
       extract(epoch FROM m.audio) AS audio_seconds,
       extract(epoch FROM m.video) AS video_seconds
FROM generate_series((%(start)s::timestamptz AT TIME ZONE 'UTC')::date,
                     ((%(end)s::timestamptz - interval '1 microsecond') AT TIME ZONE 'UTC')::date,
                     interval '1 day') AS d(day)
CROSS JOIN LATERAL (
    SELECT greatest(%(start)s::timestamptz, d.day AT TIME ZONE 'UTC') AS lo,
           least(%(end)s::timestamptz, (d.day + interval '1 day') AT TIME ZONE 'UTC') AS hi
) r
CROSS JOIN LATERAL (
    SELECT count(*) AS calls,
           count(*) FILTER (WHERE c.type = 'audio') AS audio_calls,
           count(*) FILTER (WHERE c.type = 'video') AS video_calls,
           count(c.answered_at) AS answered
    FROM calls c
    WHERE c.tenant_id = %(tenant)s AND c.created_at >= r.lo AND c.created_at < r.hi
) n
CROSS JOIN LATERAL (
    SELECT sum(t) FILTER (WHERE type = 'audio') AS audio,
           sum(t) FILTER (WHERE type = 'video') AS video
    FROM (
        SELECT c.type, {_JOINED_TIME} AS t
        FROM calls c
        JOIN call_participants p ON p.call_created_at = c.created_at AND p.call_id = c.id
        WHERE c.tenant_id = %(tenant)s AND c.created_at >= r.lo AND c.created_at < r.hi
          AND c.answered_at IS NOT NULL
          AND p.tenant_id = %(tenant)s AND p.call_created_at >= r.lo
          AND p.call_created_at < r.hi AND p.joined_at IS NOT NULL
    ) joined
) m
WHERE n.calls > 0
ORDER BY d.day"""


@dataclass
class Tally:
    calls: int = 0
    seconds: Decimal = Decimal(0)


@dataclass
class Usage:
    """Exact sums of a window: participant time in seconds, not yet rounded."""

    calls: int = 0
    answered: int = 0
    seconds: Decimal = Decimal(0)
    by_type: dict[str, Tally] = field(default_factory=lambda: {t: Tally() for t in CALL_TYPES})
    days: list[tuple[date, Tally]] = field(default_factory=list)


def minutes(seconds: Decimal) -> float:
    """Seconds as minutes, rounded once to two decimals, half up (0.3 s is 0.005 min: 0.01)."""
    return float((seconds / 60).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _seconds(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


def tally(rows: list[dict[str, Any]]) -> Usage:
    """A window's usage from its per-day rows (USAGE). A call's type is audio or video
    (checked at start), so the time of both is all of it."""
    total = Usage()
    for row in rows:
        seconds = Decimal(0)
        for call_type in CALL_TYPES:
            kind = total.by_type[call_type]
            kind.calls += row[f"{call_type}_calls"]
            kind.seconds += _seconds(row[f"{call_type}_seconds"])
            seconds += _seconds(row[f"{call_type}_seconds"])
        total.calls += row["calls"]
        total.answered += row["answered"]
        total.seconds += seconds
        total.days.append((row["day"], Tally(row["calls"], seconds)))
    return total


async def read(conn: AsyncConnection[Any], tenant: str, window: Window) -> Usage:
    # The plan's estimated cost passes PostgreSQL's JIT threshold, and compiling it would
    # cost more than it saves on a query this short (these connections only serve the
    # call log's reads, so the setting stays with them).
    await conn.execute("SET jit = off")
    cur = conn.cursor(row_factory=dict_row)
    params = {"tenant": tenant, "start": window.start, "end": window.end}
    return tally(list(await (await cur.execute(USAGE, params)).fetchall()))


def to_pb(usage: Usage) -> pb.GetUsageResponse:
    def part(t: Tally) -> pb.CallUsage:
        return pb.CallUsage(calls=t.calls, participant_minutes=minutes(t.seconds))

    return pb.GetUsageResponse(
        calls=usage.calls,
        answered_calls=usage.answered,
        participant_minutes=minutes(usage.seconds),
        by_type=pb.UsageByType(
            audio=part(usage.by_type["audio"]), video=part(usage.by_type["video"])
        ),
        days=[
            pb.UsageDay(date=day.isoformat(), calls=t.calls, participant_minutes=minutes(t.seconds))
            for day, t in usage.days
        ],
    )
