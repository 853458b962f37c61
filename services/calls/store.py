"""Call persistence: every SQL statement the call path runs, and rows mapped by name.

SQL only. What a transition writes besides the call row (events, history, ring tokens)
is rendered by `services/calls/writes.py`; the store gets it as plain rows (`Write`).
Lock order: `services/calls/locks.py`. `python -m services.calls.store` prints every
statement as PostgreSQL receives it.

This is the hot path of every call transition, so it talks to PostgreSQL through
psycopg directly rather than SQLAlchemy: every statement is a fixed text (lists travel
as arrays through `unnest`), which psycopg prepares on the server after a few uses, and
nothing is compiled per request. A transition is at most:

- a load: one statement locks the call row and reads, in the same statement, the
  tenant's policy, the room, the caller's membership and the participants (LOAD);
- a write: one statement writes the call, the changed participants, every outbox row,
  the history message, the user locks and the relays' wake-up (WRITE).

Reads that decide a transition happen in a statement after the lock: under READ
COMMITTED each statement sees what was committed when it began, and a statement that
waited for the lock began before the previous holder committed (see LOAD).

Rows are mapped by name: a call's columns are the fields of `domain.Call`
(`CALL_COLUMNS`), a participant's those of `domain.Participant`, and every statement
reads whole rows (`c.*`) or names its columns, so a column added to the table and the
dataclass needs no other change here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from types import NoneType
from typing import Any, Literal, get_args, get_origin, get_type_hints

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from services.calls.domain import Call, CallPolicy, CallRef, Participant, RoomRef
from services.calls.locks import USER_LOCK_CLASS
from services.events.types import NOTIFY_CHANNEL

CALL_COLUMNS = tuple(f.name for f in fields(Call) if f.name != "participants")
PARTICIPANT_COLUMNS = tuple(f.name for f in fields(Participant))
# The call row's columns a transition may change (the others are set once, at start).
MUTABLE_COLUMNS = (
    "status",
    "answered_at",
    "ended_at",
    "end_reason",
    "ring_deadline",
    "media_deadline",
    "media_used",
)

Row = Mapping[str, Any]


# --- statements -----------------------------------------------------------------------


# What every load starts with: the database's time, the tenant's call policy (`tenants`
# joined as `t`) and whether the room is the tenant's.
_HEAD = """now() AS now,
       t.calls_enabled, t.max_participants, t.ring_timeout_seconds AS policy_ring_timeout,
       t.default_type, t.busy_policy, t.guests_enabled, t.lobby,
       EXISTS (SELECT 1 FROM rooms WHERE id = %(room)s AND tenant_id = %(tenant)s)
         AS room_exists"""


def _participant_arrays(call: str) -> str:
    """The participants of `call` as one array per column, in user-id order, each named
    `p_<column>` (the load reads them in the snapshot of its own statement)."""
    return ",\n       ".join(
        f"ARRAY(SELECT p.{column} FROM call_participants p WHERE p.call_id = {call}"
        f" ORDER BY p.user_id) AS p_{column}"
        for column in PARTICIPANT_COLUMNS
    )


def _load(which: str, lock: str) -> str:
    """A transition's state in one statement: the database's time, the tenant's policy,
    the room and the caller's membership, the call (`which`, row-locked by `lock`) and
    its participants.

    The participants come from the statement's snapshot, taken before any wait for the
    lock; the locked call row is re-read when the lock is granted. `seen_version` (the
    call's version in the snapshot) equal to the locked row's `version` proves that no
    transition committed in between; otherwise REREAD reads them again, after the lock.
    """
    return f"""
SELECT {_HEAD},
       EXISTS (SELECT 1 FROM room_members WHERE room_id = %(room)s AND user_id = %(user)s)
         AS is_member,
       c.*,
       (SELECT s.version FROM calls s WHERE s.id = c.id) AS seen_version,
       {_participant_arrays("c.id")}
FROM (SELECT 1) one
LEFT JOIN tenants t ON t.id = %(tenant)s
LEFT JOIN LATERAL (
    SELECT * FROM calls WHERE tenant_id = %(tenant)s AND room_id = %(room)s AND {which}
    {lock}
) c ON true"""


# A call of the room by id, row-locked: every transition of an existing call.
LOCK_CALL = _load(which="id = %(call)s", lock="FOR UPDATE")
# The same without the lock (reads: GET active, a token refresh, mute).
READ_CALL = _load(which="id = %(call)s", lock="")
# The room's live call, row-locked (a start that joins it; a member's removal).
LOCK_LIVE_CALL = _load(which="status IN ('ringing', 'active')", lock="FOR UPDATE")

# After a lock wait: the membership and participants as the previous holder left them
# (a member removed from the room moves the version of the room's live call on:
# services/calls/membership.py).
REREAD = f"""
SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = %(room)s AND user_id = %(user)s)
         AS is_member,
       {_participant_arrays("%(call)s")}"""

BUMP = "UPDATE calls SET version = version + 1 WHERE id = %(call)s"


def _start_context(lock: str) -> str:
    """What a start needs: the time, the policy, the room's members and its live call (if
    any), and the caller's membership row, share-locked by `lock`: a concurrent
    RemoveMember (which deletes it first) waits for this start to commit, then finds the
    call it made."""
    return f"""
SELECT {_HEAD},
       ARRAY(SELECT user_id FROM room_members WHERE room_id = %(room)s ORDER BY user_id)
         AS members,
       (SELECT c.id FROM calls c WHERE c.room_id = %(room)s AND c.tenant_id = %(tenant)s
          AND c.status IN ('ringing', 'active')) AS live_call_id,
       m.member IS NOT NULL AS is_member
FROM (SELECT 1) one LEFT JOIN tenants t ON t.id = %(tenant)s
LEFT JOIN LATERAL (
    SELECT 1 AS member FROM room_members
    WHERE room_id = %(room)s AND user_id = %(user)s {lock}
) m ON true"""


START_CONTEXT = _start_context(lock="FOR SHARE")
# The same for a read (GET active): no row lock, which would be a write.
READ_START_CONTEXT = _start_context(lock="")


def _take_user_locks(source: str = "") -> str:
    """The one SQL that takes user locks (services/calls/locks.py): the keys in
    `%(user_locks)s`, in the array's (ascending) order, each held until commit. `source`
    makes them conditional on a row (WRITE: only for a call written)."""
    return f"""SELECT count(pg_advisory_xact_lock({USER_LOCK_CLASS}, k)) AS locked
    FROM {source}unnest(%(user_locks)s::int[]) k"""


# User locks alone, in a statement of their own (a busy start, before BUSY).
LOCK_USERS = _take_user_locks()

# Whether a user is joined in a live call of another room. Run after LOCK_USERS, in a
# statement of its own: it must see what the lock's previous holders committed.
BUSY = """
SELECT EXISTS (
    SELECT 1 FROM call_participants p JOIN calls c ON c.id = p.call_id
    WHERE p.tenant_id = %(tenant)s AND p.user_id = %(user)s AND p.state = 'joined'
      AND c.status IN ('ringing', 'active') AND c.room_id <> %(room)s
) AS busy"""

# Which of some users are members of the room (ring again), after the call's lock.
MEMBERS_AMONG = """
SELECT ARRAY(SELECT user_id FROM room_members
             WHERE room_id = %(room)s AND user_id = ANY(%(users)s::text[])) AS members"""

# PostgreSQL's array type of each Python type a participant's columns have.
_ARRAY_TYPES = {str: "text[]", datetime: "timestamptz[]", bool: "boolean[]"}


def _array_type(annotation: Any) -> str:
    """`datetime | None` -> `timestamptz[]`: the column's type, nullable or not (a
    `Literal` of strings is text)."""
    if get_origin(annotation) is Literal:
        return _ARRAY_TYPES[str]
    [python_type] = [t for t in get_args(annotation) or (annotation,) if t is not NoneType]
    return _ARRAY_TYPES[python_type]


_PARTICIPANT_TYPES = get_type_hints(Participant)


def _write() -> str:
    """WRITE, built once from the column lists of `domain.Call` and `domain.Participant`
    (so a column added to a dataclass and its table needs no edit here): every name in it
    is a dataclass field, a `p_<field>` array, or one of the write's own parameters."""
    columns = ", ".join(CALL_COLUMNS)
    values = ", ".join(f"%({column})s" for column in CALL_COLUMNS)
    updated = ",\n        ".join(f"{column} = %({column})s" for column in MUTABLE_COLUMNS)
    people = ", ".join(PARTICIPANT_COLUMNS)
    arrays = ",\n                   ".join(
        f"%(p_{column})s::{_array_type(_PARTICIPANT_TYPES[column])}"
        for column in PARTICIPANT_COLUMNS
    )
    changed = ",\n        ".join(
        f"{column} = excluded.{column}" for column in PARTICIPANT_COLUMNS if column != "user_id"
    )
    return f"""
WITH ins AS (
    INSERT INTO calls ({columns}, livekit_cleanup_pending)
    SELECT {values}, %(delete_room)s
    WHERE %(new)s
    ON CONFLICT (room_id) WHERE status IN ('ringing', 'active') DO NOTHING
    RETURNING id
),
upd AS (
    UPDATE calls SET {updated},
        livekit_cleanup_pending = livekit_cleanup_pending OR %(delete_room)s,
        version = version + 1
    WHERE id = %(id)s AND NOT %(new)s
    RETURNING id
),
c AS (SELECT id FROM ins UNION ALL SELECT id FROM upd),
p AS (
    INSERT INTO call_participants (call_id, tenant_id, call_created_at, {people})
    SELECT c.id, %(tenant_id)s, %(created_at)s, p.*
    FROM c, unnest({arrays}) AS p
    ON CONFLICT (call_id, user_id) DO UPDATE SET {changed},
        -- A rejoin overwrites the last join's times: keep what that join counted for
        -- usage (services/calls/usage.py), its time joined while the call was answered.
        joined_before = call_participants.joined_before + CASE
            WHEN excluded.state = 'joined' AND call_participants.state <> 'joined'
                 AND call_participants.left_at IS NOT NULL
                 AND %(answered_at)s::timestamptz IS NOT NULL
            THEN greatest(interval '0', call_participants.left_at
                          - greatest(call_participants.joined_at, %(answered_at)s::timestamptz))
            ELSE interval '0' END
),
o AS (
    INSERT INTO outbox (id, tenant_id, subject, payload, traceparent)
    SELECT o.id, %(tenant_id)s, o.subject, o.payload, %(traceparent)s::text
    FROM c, unnest(%(o_id)s::text[], %(o_subject)s::text[], %(o_payload)s::bytea[])
         AS o(id, subject, payload)
    RETURNING lane
),
h AS (
    INSERT INTO messages (id, tenant_id, room_id, sender_id, parts, call_id)
    SELECT %(h_id)s, %(tenant_id)s, %(room_id)s, %(h_sender)s, %(h_parts)s::jsonb, c.id
    FROM c WHERE %(h_parts)s::jsonb IS NOT NULL
    ON CONFLICT (call_id) DO NOTHING
),
u AS ({_take_user_locks("c, ")})
SELECT (SELECT id FROM c) AS written,
       (SELECT locked FROM u) AS user_locks,
       (SELECT pg_notify('{NOTIFY_CHANNEL}', lanes)
        FROM (SELECT string_agg(DISTINCT lane::text, ',') AS lanes FROM o) written_lanes
        WHERE lanes IS NOT NULL) AS notified"""


# Everything a transition writes, in one statement. A new call (`new`) is inserted, and
# nothing at all is written when another live call won the room first (the partial
# unique index on calls(room_id)): `written` is then NULL. Otherwise the locked call is
# updated (its MUTABLE_COLUMNS). Then, for the call written: the changed participants,
# the outbox rows, the history message (an ended call's, once), the user locks of those
# who became joined, and the NOTIFY that names the relay lanes written (the database
# computes a row's lane), so a relay wakes only those.
WRITE = _write()


class Due:
    """Calls a sweep looks for (`where`, oldest first by `order`): `lock` takes them
    (SKIP LOCKED shares them out between replicas), `exists` says in one read, with no
    transaction, whether there are any (the usual answer, every sweep tick of every
    process, is no)."""

    def __init__(self, where: str, order: str) -> None:
        self.exists = f"EXISTS (SELECT 1 FROM calls c WHERE {where})"
        self.lock = f"""
SELECT now() AS now, c.* FROM calls c WHERE {where}
ORDER BY {order} LIMIT %(limit)s
FOR UPDATE SKIP LOCKED"""


DUE_RINGING = Due("c.status = 'ringing' AND c.ring_deadline <= now()", "c.ring_deadline")
DUE_NO_MEDIA = Due("c.status = 'active' AND c.media_deadline <= now()", "c.media_deadline")
# Group calls with invitations whose ring window passed.
DUE_INVITES = Due(
    "c.status = 'active' AND c.id IN"
    " (SELECT p.call_id FROM call_participants p WHERE p.ring_deadline <= now())",
    "c.created_at",
)
# Active calls for reconciliation with LiveKit, oldest first; SKIP LOCKED: a call in a
# transition now is looked at next round.
ACTIVE = Due("c.status = 'active'", "c.created_at")

LOCK_BY_MEDIA_ROOM = """
SELECT now() AS now, c.* FROM calls c WHERE c.livekit_room = %(livekit_room)s
FOR UPDATE"""

PARTICIPANTS_OF = """
SELECT p.* FROM call_participants p WHERE p.call_id = ANY(%(calls)s::text[])"""


def _of_user(whose: str) -> str:
    """A user's live calls in rooms the user is still a member of (a guest, who is no
    member, has the one call of its link), with `whose` saying which of the user's
    participations count."""
    return f"""
SELECT now() AS now, c.* FROM calls c
JOIN call_participants p ON p.call_id = c.id AND p.user_id = %(user)s AND {whose}
LEFT JOIN room_members m ON m.room_id = c.room_id AND m.user_id = %(user)s
WHERE c.tenant_id = %(tenant)s AND c.status IN ('ringing', 'active')
  AND (m.user_id IS NOT NULL OR starts_with(p.user_id, 'guest:'))
ORDER BY c.created_at"""


# What the user should see after (re)connecting (call.sync).
CALLS_OF_USER = _of_user("p.state <> 'removed'")
# The calls ringing for the user now.
RINGING_FOR_USER = _of_user("p.state = 'invited' AND p.ring_deadline > now()")

LIVE_COUNTS = """
SELECT status, count(*) AS n FROM calls WHERE status IN ('ringing', 'active') GROUP BY 1"""

TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s) AS locked"

# Ended calls whose LiveKit room is still to be deleted, ended at least `settle` seconds
# ago (the process that ended a call deletes its room at once; this is the retry). Read
# without a lock: LiveKit is called outside any transaction, and a room deleted twice by
# two replicas is harmless (deleting a missing room succeeds).
PENDING_CLEANUPS = """
SELECT id, livekit_room FROM calls
WHERE livekit_cleanup_pending AND ended_at <= now() - make_interval(secs => %(settle)s)
ORDER BY ended_at LIMIT %(limit)s"""

CLEANED = "UPDATE calls SET livekit_cleanup_pending = false WHERE id = ANY(%(calls)s::text[])"

# Which of some LiveKit rooms belong to a live call (reconciliation: the others go).
LIVE_MEDIA_ROOMS = """
SELECT ARRAY(SELECT c.livekit_room FROM calls c
             WHERE c.livekit_room = ANY(%(rooms)s::text[])
               AND c.status IN ('ringing', 'active')) AS rooms"""

# --- call links (guests knock with them) --------------------------------------------

LINK_COLUMNS = "id, call_id, created_at, expires_at, max_uses, uses"

INSERT_LINK = f"""
INSERT INTO call_links (id, tenant_id, call_id, room_id, secret_hash, created_by, expires_at,
                        max_uses)
VALUES (%(link)s, %(tenant)s, %(call)s, %(room)s, %(secret_hash)s, %(created_by)s,
        now() + make_interval(secs => %(ttl)s), %(max_uses)s)
RETURNING {LINK_COLUMNS}"""

# A call's links that still work, newest first.
LIST_LINKS = f"""
SELECT {LINK_COLUMNS} FROM call_links
WHERE call_id = %(call)s AND revoked_at IS NULL AND expires_at > now() AND uses < max_uses
ORDER BY created_at DESC, id"""

REVOKE_LINK = """
UPDATE call_links SET revoked_at = coalesce(revoked_at, now())
WHERE id = %(link)s AND call_id = %(call)s
RETURNING id"""

# One knock on a link that still works, in one statement: its rate (a token bucket of
# `burst` knocks refilled at `rate` a second, kept in the row, so one bucket for every
# replica) and, when the bucket holds a knock, one use, counted atomically (the row lock
# serializes concurrent knocks, so `uses` never passes `max_uses`). In the transaction
# that then locks the call and adds the guest, so a knock refused later counts no use.
# No row: the link does not work; `allowed` false: over its rate (nothing spent). Lock
# order: the link's row, then the call's (services/calls/locks.py).
REDEEM_LINK = """
WITH link AS (
    SELECT id, least(%(burst)s::float8, coalesce(
               knock_tokens + extract(epoch FROM now() - knocked_at)::float8 * %(rate)s,
               %(burst)s::float8)) AS tokens
    FROM call_links
    WHERE id = %(link)s AND secret_hash = %(secret_hash)s AND revoked_at IS NULL
      AND expires_at > now() AND uses < max_uses
    FOR UPDATE
)
UPDATE call_links l
SET uses = l.uses + (link.tokens >= 1)::int,
    knock_tokens = link.tokens - (link.tokens >= 1)::int,
    knocked_at = now()
FROM link WHERE l.id = link.id
RETURNING l.tenant_id, l.room_id, l.call_id, l.expires_at, link.tokens >= 1 AS allowed"""


STATEMENTS: dict[str, str] = {
    "LOCK_CALL": LOCK_CALL,
    "READ_CALL": READ_CALL,
    "LOCK_LIVE_CALL": LOCK_LIVE_CALL,
    "REREAD": REREAD,
    "BUMP": BUMP,
    "START_CONTEXT": START_CONTEXT,
    "READ_START_CONTEXT": READ_START_CONTEXT,
    "LOCK_USERS": LOCK_USERS,
    "BUSY": BUSY,
    "MEMBERS_AMONG": MEMBERS_AMONG,
    "WRITE": WRITE,
    **{
        f"{name}.{kind}": sql
        for name, due in (
            ("DUE_RINGING", DUE_RINGING),
            ("DUE_NO_MEDIA", DUE_NO_MEDIA),
            ("DUE_INVITES", DUE_INVITES),
            ("ACTIVE", ACTIVE),
        )
        for kind, sql in (("lock", due.lock), ("exists", f"SELECT {due.exists}"))
    },
    "LOCK_BY_MEDIA_ROOM": LOCK_BY_MEDIA_ROOM,
    "PARTICIPANTS_OF": PARTICIPANTS_OF,
    "CALLS_OF_USER": CALLS_OF_USER,
    "RINGING_FOR_USER": RINGING_FOR_USER,
    "LIVE_COUNTS": LIVE_COUNTS,
    "TRY_LOCK": TRY_LOCK,
    "PENDING_CLEANUPS": PENDING_CLEANUPS,
    "CLEANED": CLEANED,
    "LIVE_MEDIA_ROOMS": LIVE_MEDIA_ROOMS,
    "INSERT_LINK": INSERT_LINK,
    "LIST_LINKS": LIST_LINKS,
    "REVOKE_LINK": REVOKE_LINK,
    "REDEEM_LINK": REDEEM_LINK,
}


# --- rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """Everything a transition on one call decides on, read under the call's lock."""

    now: datetime
    policy: CallPolicy | None
    call: Call | None
    room_exists: bool
    is_member: bool


@dataclass(frozen=True)
class StartContext:
    now: datetime
    policy: CallPolicy | None
    room_exists: bool
    members: list[str]
    live_call_id: str | None
    is_member: bool


@dataclass(frozen=True)
class OutboxRow:
    id: str  # the NATS message id (an event's parts: the event id, then `<id>.<n>`)
    subject: str
    payload: bytes  # a serialized CallEvent


@dataclass(frozen=True)
class HistoryRow:
    """The room timeline's message of an ended call."""

    id: str
    sender: str
    parts: list[dict[str, Any]]


@dataclass(frozen=True)
class Write:
    """A transition's write, as rows: the call afterwards (inserted when `new`, else
    updated under its row lock), the participants that changed, the outbox rows, the
    history message, the lock keys of users it makes joined, and whether the media room
    is to be deleted after commit (marked in the same write, for the retry sweep)."""

    call: Call
    new: bool
    participants: Sequence[Participant]
    outbox: Sequence[OutboxRow]
    history: HistoryRow | None
    user_locks: Sequence[int]
    delete_room: bool
    traceparent: str | None


def _policy(row: Row) -> CallPolicy | None:
    if row["calls_enabled"] is None:
        return None
    return CallPolicy(
        enabled=row["calls_enabled"],
        max_participants=row["max_participants"],
        ring_timeout_seconds=row["policy_ring_timeout"],
        default_type=row["default_type"],
        busy_policy=row["busy_policy"],
        guests_enabled=row["guests_enabled"],
        lobby=row["lobby"],
    )


def _call(row: Row, participants: Sequence[Participant] = ()) -> Call | None:
    if row["id"] is None:
        return None
    people = tuple(sorted(participants, key=lambda p: p.user_id))
    return Call(**{column: row[column] for column in CALL_COLUMNS}, participants=people)


def _participant(row: Row) -> Participant:
    return Participant(**{column: row[column] for column in PARTICIPANT_COLUMNS})


def _participants_of(row: Row) -> list[Participant]:
    """The participants of a load's parallel arrays (`p_<column>`)."""
    arrays = [row[f"p_{column}"] for column in PARTICIPANT_COLUMNS]
    return [
        Participant(**dict(zip(PARTICIPANT_COLUMNS, values, strict=True)))
        for values in zip(*arrays, strict=True)
    ]


async def _one(conn: AsyncConnection[Any], sql: str, params: Mapping[str, Any]) -> Row:
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(sql, params)).fetchone()
    assert row is not None  # every statement here returns one row
    return row


async def _all(conn: AsyncConnection[Any], sql: str, params: Mapping[str, Any]) -> list[Row]:
    cur = conn.cursor(row_factory=dict_row)
    return list(await (await cur.execute(sql, params)).fetchall())


# --- reads ----------------------------------------------------------------------------


async def _load_with(conn: AsyncConnection[Any], sql: str, params: dict[str, str]) -> Loaded:
    row = await _one(conn, sql, params)
    is_member, arrays = row["is_member"], row
    if row["id"] is not None and row["version"] != row["seen_version"]:
        # We waited for the lock while a transition committed: read what it left.
        arrays = await _one(conn, REREAD, {**params, "call": row["id"]})
        is_member = arrays["is_member"]
    call = _call(row, _participants_of(arrays))
    return Loaded(row["now"], _policy(row), call, row["room_exists"], is_member)


async def load(conn: AsyncConnection[Any], ref: CallRef, user: str, *, lock: bool) -> Loaded:
    """The tenant's policy, the call (row-locked when `lock`) and its participants, and
    whether `user` is a member of the room: one statement (two after a lock wait)."""
    params = {"tenant": ref.tenant, "room": ref.room, "call": ref.call, "user": user}
    return await _load_with(conn, LOCK_CALL if lock else READ_CALL, params)


async def lock_live_call(conn: AsyncConnection[Any], room: RoomRef, user: str) -> Loaded:
    """The room's live call, locked, with the same reads as `load`."""
    return await _load_with(
        conn, LOCK_LIVE_CALL, {"tenant": room.tenant, "room": room.room, "user": user}
    )


async def start_context(
    conn: AsyncConnection[Any], room: RoomRef, user: str, *, lock: bool
) -> StartContext:
    params = {"tenant": room.tenant, "room": room.room, "user": user}
    row = await _one(conn, START_CONTEXT if lock else READ_START_CONTEXT, params)
    return StartContext(
        now=row["now"],
        policy=_policy(row),
        room_exists=row["room_exists"],
        members=list(row["members"]),
        live_call_id=row["live_call_id"],
        is_member=row["is_member"],
    )


async def busy(
    conn: AsyncConnection[Any], *, tenant: str, room: str, callee: str, user_locks: list[int]
) -> bool:
    """Whether the callee of a 1:1 start is joined in a live call elsewhere. Takes the
    user locks first, so that nobody joins a call between this answer and the commit."""
    await conn.execute(LOCK_USERS, {"user_locks": user_locks})
    row = await _one(conn, BUSY, {"tenant": tenant, "room": room, "user": callee})
    return bool(row["busy"])


async def members_among(conn: AsyncConnection[Any], room: str, users: list[str]) -> set[str]:
    row = await _one(conn, MEMBERS_AMONG, {"room": room, "users": users})
    return set(row["members"])


async def which_due(conn: AsyncConnection[Any], dues: Sequence[Due]) -> list[bool]:
    """Whether each has calls due, in one read (a sweep tick's usual answer: none)."""
    row = await (await conn.execute("SELECT " + ", ".join(d.exists for d in dues))).fetchone()
    return [bool(flag) for flag in row] if row else [False] * len(dues)


async def with_participants(conn: AsyncConnection[Any], rows: list[Row]) -> list[Call]:
    people: dict[str, list[Participant]] = {row["id"]: [] for row in rows}
    for p in await _all(conn, PARTICIPANTS_OF, {"calls": list(people)}):
        people[p["call_id"]].append(_participant(p))
    return [call for row in rows if (call := _call(row, people[row["id"]])) is not None]


async def lock_due(conn: AsyncConnection[Any], due: Due, limit: int) -> tuple[datetime, list[Call]]:
    """Calls past a deadline (DUE_RINGING, DUE_INVITES, DUE_NO_MEDIA) or ACTIVE ones,
    locked."""
    rows = await _all(conn, due.lock, {"limit": limit})
    if not rows:
        return datetime.min, []
    return rows[0]["now"], await with_participants(conn, rows)


async def lock_by_media_room(
    conn: AsyncConnection[Any], livekit_room: str
) -> tuple[datetime, Call | None]:
    rows = await _all(conn, LOCK_BY_MEDIA_ROOM, {"livekit_room": livekit_room})
    if not rows:
        return datetime.min, None
    [call] = await with_participants(conn, rows)
    return rows[0]["now"], call


async def calls_of_user(
    conn: AsyncConnection[Any], *, tenant: str, user: str, ringing: bool = False
) -> list[Call]:
    """The user's live calls, or (`ringing`) those ringing for the user now."""
    sql = RINGING_FOR_USER if ringing else CALLS_OF_USER
    rows = await _all(conn, sql, {"tenant": tenant, "user": user})
    return await with_participants(conn, rows) if rows else []


async def live_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    rows = await _all(conn, LIVE_COUNTS, {})
    return {"ringing": 0, "active": 0, **{r["status"]: int(r["n"]) for r in rows}}


async def try_lock(conn: AsyncConnection[Any], key: int) -> bool:
    """A transaction-scoped advisory lock, if free: one process at a time does the job."""
    return bool((await _one(conn, TRY_LOCK, {"key": key}))["locked"])


async def pending_cleanups(
    conn: AsyncConnection[Any], *, settle: float, limit: int
) -> list[tuple[str, str]]:
    rows = await _all(conn, PENDING_CLEANUPS, {"settle": settle, "limit": limit})
    return [(r["id"], r["livekit_room"]) for r in rows]


async def live_media_rooms(conn: AsyncConnection[Any], rooms: list[str]) -> set[str]:
    return set((await _one(conn, LIVE_MEDIA_ROOMS, {"rooms": rooms}))["rooms"])


@dataclass(frozen=True)
class Link:
    id: str
    call_id: str
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int


@dataclass(frozen=True)
class Redeemed:
    """A knock on a working link: the call it is for, when the link expires, and whether
    the link's rate allowed it (then one use was counted)."""

    tenant_id: str
    room_id: str
    call_id: str
    expires_at: datetime
    allowed: bool


async def insert_link(
    conn: AsyncConnection[Any],
    *,
    link: str,
    call: Call,
    secret_hash: str,
    created_by: str | None,
    ttl: int,
    max_uses: int,
) -> Link:
    params = {
        "link": link,
        "tenant": call.tenant_id,
        "call": call.id,
        "room": call.room_id,
        "secret_hash": secret_hash,
        "created_by": created_by,
        "ttl": ttl,
        "max_uses": max_uses,
    }
    return Link(**(await _one(conn, INSERT_LINK, params)))


async def live_links(conn: AsyncConnection[Any], call_id: str) -> list[Link]:
    return [Link(**row) for row in await _all(conn, LIST_LINKS, {"call": call_id})]


async def revoke_link(conn: AsyncConnection[Any], *, call_id: str, link: str) -> bool:
    """True when the call has that link (revoked now or before)."""
    return bool(await _all(conn, REVOKE_LINK, {"call": call_id, "link": link}))


async def redeem_link(
    conn: AsyncConnection[Any], *, link: str, secret_hash: str, rate: float, burst: int
) -> Redeemed | None:
    """A knock on a link (None: the link does not work)."""
    params = {"link": link, "secret_hash": secret_hash, "rate": rate, "burst": burst}
    rows = await _all(conn, REDEEM_LINK, params)
    return Redeemed(**rows[0]) if rows else None


# --- writes ---------------------------------------------------------------------------


async def write(conn: AsyncConnection[Any], w: Write) -> bool:
    """Writes a transition in one statement. False only for a new call whose room's live
    call slot was taken first (then nothing at all is written)."""
    return (await _one(conn, WRITE, write_params(w)))["written"] is not None


def write_params(w: Write) -> dict[str, Any]:
    """WRITE's parameters, by name: the call's columns, the participants' columns as
    arrays (`p_<column>`), the outbox rows' (`o_`), the history message's (`h_`)."""
    call = w.call
    params: dict[str, Any] = {column: getattr(call, column) for column in CALL_COLUMNS}
    params["custom"] = Jsonb(call.custom) if call.custom is not None else None
    params.update(
        {
            f"p_{column}": [getattr(p, column) for p in w.participants]
            for column in PARTICIPANT_COLUMNS
        }
    )
    params.update(
        new=w.new,
        delete_room=w.delete_room,
        o_id=[o.id for o in w.outbox],
        o_subject=[o.subject for o in w.outbox],
        o_payload=[o.payload for o in w.outbox],
        traceparent=w.traceparent,
        h_id=w.history.id if w.history else None,
        h_sender=w.history.sender if w.history else None,
        h_parts=Jsonb(w.history.parts) if w.history else None,
        user_locks=list(w.user_locks),
    )
    return params


async def bump(conn: AsyncConnection[Any], call_id: str) -> None:
    """Marks a locked call as changed (see REREAD) without changing anything else."""
    await conn.execute(BUMP, {"call": call_id})


async def mark_cleaned(conn: AsyncConnection[Any], call_ids: list[str]) -> None:
    await conn.execute(CLEANED, {"calls": call_ids})


if __name__ == "__main__":  # python -m services.calls.store: every statement, whole
    for name, sql in STATEMENTS.items():
        sys.stdout.write(f"-- {name}\n{sql.strip()};\n\n")
