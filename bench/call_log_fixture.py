"""A call history of realistic shape written straight into PostgreSQL with COPY, for the
call-log and usage benchmark (`bench/call_log.py`): never through the API, which would
take hours for a million calls.

One large tenant (by default 1,000,000 calls over the last 365 days, in 20,000 rooms of
10,000 users) and many small ones (100 tenants of 5,000 calls each), interleaved in time
as a shared database would hold them. Rows look like what the call path writes: 1:1
calls (70 %) answered, missed, declined or cancelled; group calls whose invited members
join, leave (some rejoin: `joined_before`) or miss the ring; the newest few calls of the
large tenant still live (one per room). Deterministic for a seed.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

CALL_COLUMNS = (
    "id, tenant_id, room_id, type, mode, status, created_by, created_at, answered_at,"
    " ended_at, end_reason, ring_timeout_seconds, livekit_room, livekit_cleanup_pending,"
    " media_used"
)
PARTICIPANT_COLUMNS = (
    "call_id, user_id, tenant_id, state, joined_at, left_at, ever_joined, call_created_at,"
    " joined_before"
)
LIVE_CALLS = 50  # of the large tenant: the newest, each in a room of its own
ZERO = timedelta(0)

# A participant: user, state, joined_at, left_at, joined_before.
Person = tuple[str, str, datetime | None, datetime | None, timedelta]
# What a call came to: status, answered_at, ended_at, end_reason, participants.
Outcome = tuple[str, datetime | None, datetime | None, str | None, list[Person]]


@dataclass(frozen=True)
class Shape:
    calls: int = 1_000_000
    rooms: int = 20_000
    users: int = 10_000
    other_tenants: int = 100
    other_calls: int = 5_000
    other_rooms: int = 100
    days: int = 365
    seed: int = 26


@dataclass(frozen=True)
class Room:
    id: str
    tenant_id: str
    members: tuple[str, ...]


def _id(rng: random.Random, prefix: str) -> str:
    return f"{prefix}_{rng.getrandbits(128):032x}"


def _rooms(rng: random.Random, tenant_id: str, count: int, users: int) -> list[Room]:
    """Rooms of 2 members (70 %) or 3 to 8."""
    rooms = []
    for _ in range(count):
        size = 2 if rng.random() < 0.7 else rng.randint(3, 8)
        members = tuple(f"u{n}" for n in rng.sample(range(users), size))
        rooms.append(Room(_id(rng, "rm"), tenant_id, members))
    return rooms


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


class Writer:
    """Renders calls and their participants as rows, written with COPY in chunks (the
    participants after their calls, for the foreign key)."""

    CHUNK = 20_000

    def __init__(self, rng: random.Random, db: psycopg.Connection[Any]) -> None:
        self.rng = rng
        self.db = db
        self.calls: list[tuple[Any, ...]] = []
        self.participants: list[tuple[Any, ...]] = []

    def flush(self) -> None:
        with self.db.cursor() as cur:
            for table, columns, rows in (
                ("calls", CALL_COLUMNS, self.calls),
                ("call_participants", PARTICIPANT_COLUMNS, self.participants),
            ):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                rows.clear()

    def call(self, room: Room, created: datetime, live: bool) -> None:
        rng = self.rng
        call_id = _id(rng, "call")
        creator = rng.choice(room.members)
        call_type = "video" if rng.random() < 0.6 else "audio"
        people: list[Person]
        if len(room.members) == 2:
            status, answered, ended, reason, people = self._direct(room, creator, created, live)
            mode = "direct"
        else:
            status, answered, ended, reason, people = self._group(room, creator, created, live)
            mode = "group"
        self.calls.append(
            (
                call_id,
                room.tenant_id,
                room.id,
                call_type,
                mode,
                status,
                creator,
                created,
                answered,
                ended,
                reason,
                45,
                call_id,
                False,
                answered is not None,
            )
        )
        for user, state, joined, left, before in people:
            self.participants.append(
                (
                    call_id,
                    user,
                    room.tenant_id,
                    state,
                    joined,
                    left,
                    joined is not None,
                    created,
                    before,
                )
            )
        if len(self.calls) >= self.CHUNK:
            self.flush()

    def _direct(self, room: Room, creator: str, created: datetime, live: bool) -> Outcome:
        rng = self.rng
        [callee] = [m for m in room.members if m != creator]
        if live:
            answered = created + _seconds(rng.uniform(2, 20))
            return (
                "active",
                answered,
                None,
                None,
                [
                    (creator, "joined", created, None, ZERO),
                    (callee, "joined", answered, None, ZERO),
                ],
            )
        roll = rng.random()
        if roll < 0.7:  # answered, then one side hung up
            answered = created + _seconds(rng.uniform(2, 20))
            ended = answered + _seconds(rng.expovariate(1 / 300))
            return (
                "ended",
                answered,
                ended,
                "hangup",
                [
                    (creator, "left", created, ended, ZERO),
                    (callee, "left", answered, ended, ZERO),
                ],
            )
        if roll < 0.85:
            ended, reason, callee_state = created + _seconds(45), "timeout", "invited"
        elif roll < 0.95:
            ended, reason, callee_state = (
                created + _seconds(rng.uniform(2, 15)),
                "declined",
                "declined",
            )
        else:
            ended, reason, callee_state = (
                created + _seconds(rng.uniform(2, 40)),
                "cancelled",
                "invited",
            )
        return (
            "ended",
            None,
            ended,
            reason,
            [(creator, "left", created, ended, ZERO), (callee, callee_state, None, None, ZERO)],
        )

    def _group(self, room: Room, creator: str, created: datetime, live: bool) -> Outcome:
        rng = self.rng
        invited = [m for m in room.members if m != creator]
        joins = {m: created + _seconds(rng.uniform(2, 40)) for m in invited if rng.random() < 0.7}
        if not joins:  # nobody came: the creator gave up
            ended = created + _seconds(rng.uniform(20, 60))
            alone: list[Person] = [(m, "missed", None, None, ZERO) for m in invited]
            if live:
                return (
                    "active",
                    None,
                    None,
                    None,
                    [(creator, "joined", created, None, ZERO), *alone],
                )
            return (
                "ended",
                None,
                ended,
                "all_left",
                [(creator, "left", created, ended, ZERO), *alone],
            )
        answered = min(joins.values())
        ended = answered + _seconds(rng.expovariate(1 / 900))
        people: list[Person] = [
            (creator, "joined" if live else "left", created, None if live else ended, ZERO)
        ]
        for member in invited:
            joined = joins.get(member)
            if joined is None:
                people.append(
                    (member, "declined" if rng.random() < 0.3 else "missed", None, None, ZERO)
                )
                continue
            before = ZERO
            if rng.random() < 0.1:  # dropped out and came back: the earlier stint is kept
                before = _seconds(rng.uniform(10, 120))
                joined += before + _seconds(5)
            left = min(ended, joined + _seconds(rng.expovariate(1 / 600)))
            if live:
                people.append((member, "joined", min(joined, ended), None, before))
            else:
                people.append((member, "left", min(joined, left), left, before))
        if live:
            return "active", answered, None, None, people
        return "ended", answered, ended, "all_left" if rng.random() < 0.5 else "hangup", people


def _tenants(db: psycopg.Connection[Any], ids: list[str]) -> None:
    columns = "id, name, calls_enabled, max_participants, ring_timeout_seconds, default_type"
    with db.cursor() as cur, cur.copy(f"COPY tenants ({columns}) FROM STDIN") as copy:
        for tenant_id in ids:
            copy.write_row((tenant_id, "bench", True, 8, 45, "video"))


@dataclass(frozen=True)
class History:
    """What a benchmark needs to know of the large tenant's history."""

    start: datetime  # its calls were created from here
    end: datetime  # to here (the live ones just before)
    rooms: list[str]
    users: list[str]


def populate(database_url: str, tenant_id: str, shape: Shape = Shape()) -> History:
    """Writes the history: `tenant_id` (which exists) gets `shape.calls` calls; the other
    tenants are created here."""
    rng = random.Random(shape.seed)
    others = [f"ten_{uuid.UUID(int=rng.getrandbits(128)).hex}" for _ in range(shape.other_tenants)]
    rooms = {tenant_id: _rooms(rng, tenant_id, shape.rooms, shape.users)}
    for other in others:
        rooms[other] = _rooms(rng, other, shape.other_rooms, 200)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=shape.days)
    span = (now - start).total_seconds() - 3600
    # (when, tenant): every call's start, in time order as the table would receive them.
    starts = [(rng.uniform(0, span), tenant_id) for _ in range(shape.calls - LIVE_CALLS)]
    starts += [(rng.uniform(0, span), t) for t in others for _ in range(shape.other_calls)]
    starts.sort()
    live_rooms = rng.sample(rooms[tenant_id], LIVE_CALLS)
    with psycopg.connect(database_url) as db:
        _tenants(db, others)
        with db.cursor() as cur:
            with cur.copy("COPY rooms (id, tenant_id, name) FROM STDIN") as copy:
                for tenant_rooms in rooms.values():
                    for room in tenant_rooms:
                        copy.write_row((room.id, room.tenant_id, ""))
            with cur.copy("COPY room_members (room_id, user_id, tenant_id) FROM STDIN") as copy:
                for tenant_rooms in rooms.values():
                    for room in tenant_rooms:
                        for member in room.members:
                            copy.write_row((room.id, member, room.tenant_id))
        writer = Writer(rng, db)
        for offset, tenant in starts:
            writer.call(rng.choice(rooms[tenant]), start + _seconds(offset), live=False)
        for i, room in enumerate(live_rooms):
            writer.call(room, now - _seconds(600 - i), live=True)
        writer.flush()
        db.commit()
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("VACUUM (ANALYZE) calls, call_participants, rooms, room_members")
    return History(
        start=start,
        end=now,
        rooms=[r.id for r in rooms[tenant_id]],
        users=[f"u{n}" for n in range(shape.users)],
    )
