"""Call persistence: loading a call under its row lock and saving a transition.

This is the hot path of every call transition, so it talks to PostgreSQL through
psycopg directly rather than SQLAlchemy: every statement below is a fixed text (lists
travel as arrays through `unnest`), which psycopg prepares on the server after a few
uses, and no statement is compiled per request. A transition is at most:

- load: the call row locked together with the tenant's policy, then its participants
  and the caller's membership (2 statements);
- save: one statement whose CTEs update the call, upsert the changed participants,
  insert every outbox row, insert the history message and NOTIFY the relays.

Reads that decide a transition happen in a statement after the lock: under READ
COMMITTED each statement sees what was committed when it began, and a statement that
waited for the lock began before the previous holder committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sendsar.calls.v1 import events_pb2

from services.calls import history
from services.calls.domain import Call, CallPolicy, Change, Event, Participant
from services.common import tracing
from services.common.models import new_id
from services.events.types import NOTIFY_CHANNEL, RING_STOPPED, subject

# Socket recipients per outbox message: an event to a huge room is split so that no
# message comes near NATS's payload limit (each part reaches its own recipients).
RECIPIENTS_PER_MESSAGE = 500

_CALL_COLUMNS = (
    "c.id, c.tenant_id, c.room_id, c.type, c.mode, c.status, c.created_by, c.created_at,"
    " c.ring_timeout_seconds, c.livekit_room, c.answered_at, c.ended_at, c.end_reason,"
    " c.ring_deadline, c.media_deadline, c.custom, c.media_used"
)
_N_CALL = 17
_POLICY_COLUMNS = (
    "t.calls_enabled, t.max_participants, t.ring_timeout_seconds, t.default_type, t.busy_policy"
)
_N_POLICY = 5
_LIVE = "c.status IN ('ringing', 'active')"

# One statement loads a transition's state: the transaction's time, the tenant's policy,
# the call (row-locked, or not), whether the caller is a member of the room, and the
# call's participants as parallel arrays. The participants come from the statement's
# snapshot, taken before any wait for the lock; the call row is re-read when the lock is
# granted. `seen_version` (the call's version in the snapshot) equal to the locked row's
# version proves no transition committed in between; otherwise the participants are
# read again (PARTICIPANTS), after the lock.
_LOAD = f"""
SELECT now(), {_POLICY_COLUMNS}, {_CALL_COLUMNS}, c.version,
       (SELECT c1.version FROM calls c1 WHERE c1.id = c.id),
       EXISTS (SELECT 1 FROM rooms WHERE id = %(room)s AND tenant_id = %(tenant)s),
       EXISTS (SELECT 1 FROM room_members WHERE room_id = %(room)s AND user_id = %(user)s),
       {{participants}}
FROM (SELECT 1) one
LEFT JOIN tenants t ON t.id = %(tenant)s
LEFT JOIN LATERAL (
    SELECT * FROM calls c0 WHERE c0.tenant_id = %(tenant)s AND c0.room_id = %(room)s
      AND {{which}} {{lock}}
) c ON true"""
_N_HEAD = 1 + _N_POLICY + _N_CALL + 4


_PARTICIPANT_COLUMNS = ("user_id", "state", "joined_at", "left_at", "ever_joined", "ring_deadline")


def _arrays(call_id: str) -> str:
    return ", ".join(
        f"ARRAY(SELECT p.{col} FROM call_participants p WHERE p.call_id = {call_id}"
        " ORDER BY p.user_id)"
        for col in _PARTICIPANT_COLUMNS
    )


_PARTICIPANT_ARRAYS = _arrays("c.id")
LOCK_CALL = _LOAD.format(
    participants=_PARTICIPANT_ARRAYS, which="c0.id = %(call)s", lock="FOR UPDATE"
)
READ_CALL = _LOAD.format(participants=_PARTICIPANT_ARRAYS, which="c0.id = %(call)s", lock="")
LOCK_LIVE_CALL = _LOAD.format(
    participants=_PARTICIPANT_ARRAYS,
    which="c0.status IN ('ringing', 'active')",
    lock="FOR UPDATE",
)
# The re-read after a lock wait: membership too (a member removed from the room bumps
# the version of the room's live call: services/calls/membership.py).
REREAD = f"""
SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = %(room)s AND user_id = %(user)s),
       {_arrays("%(call)s")}"""

BUMP = "UPDATE calls SET version = version + 1 WHERE id = %(call)s"

# Per-user transaction locks serialize "is this user in a call?" (the busy check) with
# every write that puts a user in one. Keys in one order, so two holders never wait on
# each other; the two-int key space is apart from the single-key locks used elsewhere.
USER_LOCK_CLASS = 7272
LOCK_USERS = f"""
SELECT count(pg_advisory_xact_lock({USER_LOCK_CLASS}, k)) FROM (
    SELECT DISTINCT hashtext(%(tenant)s || '/' || u) AS k
    FROM unnest(%(lock_users)s::text[]) u ORDER BY 1
) keys"""

# Whether a user is joined in a live call of another room. Run after LOCK_USERS, in a
# statement of its own: it must see what the lock's previous holders committed.
BUSY = """
SELECT EXISTS (
    SELECT 1 FROM call_participants p JOIN calls c ON c.id = p.call_id
    WHERE p.tenant_id = %(tenant)s AND p.user_id = %(user)s AND p.state = 'joined'
      AND c.status IN ('ringing', 'active') AND c.room_id <> %(room)s
)"""

# Which of some users are members of the room (ring again), after the call's lock.
MEMBERS_AMONG = """
SELECT ARRAY(SELECT user_id FROM room_members
             WHERE room_id = %(room)s AND user_id = ANY(%(users)s::text[]))"""

# What a start needs: policy, time, the room's members and its live call (if any), and
# the caller's membership row share-locked: a concurrent RemoveMember (which deletes it
# first) waits for this start to commit, then finds the call it made.
_START_CONTEXT = f"""
SELECT now(), {_POLICY_COLUMNS},
       EXISTS (SELECT 1 FROM rooms WHERE id = %(room)s AND tenant_id = %(tenant)s),
       ARRAY(SELECT user_id FROM room_members WHERE room_id = %(room)s ORDER BY user_id),
       (SELECT c.id FROM calls c WHERE c.room_id = %(room)s AND c.tenant_id = %(tenant)s
          AND {_LIVE}),
       m.member IS NOT NULL
FROM (SELECT 1) one LEFT JOIN tenants t ON t.id = %(tenant)s
LEFT JOIN LATERAL (
    SELECT 1 AS member FROM room_members
    WHERE room_id = %(room)s AND user_id = %(user)s {{lock}}
) m ON true"""
START_CONTEXT = _START_CONTEXT.replace("{lock}", "FOR SHARE")
# The same for a read (GET active): no row lock, which would be a write.
READ_START_CONTEXT = _START_CONTEXT.replace("{lock}", "")

# The outbox rows, the history message and the wake-up, shared by both writes below.
# The NOTIFY names the relay lanes that have new rows (the database computes a row's
# lane), so a relay wakes only those.
_WRITE_TAIL = """
o AS (
    INSERT INTO outbox (id, tenant_id, subject, payload, traceparent)
    SELECT o.id, %(tenant)s, o.subject, o.payload, %(traceparent)s::text
    FROM unnest(%(o_id)s::text[], %(o_subject)s::text[], %(o_payload)s::bytea[])
         AS o(id, subject, payload){gate}
    RETURNING lane
),
h AS (
    INSERT INTO messages (id, tenant_id, room_id, sender_id, parts, call_id)
    SELECT %(h_id)s, %(tenant)s, %(room)s, %(h_sender)s, %(h_parts)s, %(id)s
    WHERE %(h_write)s
    ON CONFLICT (call_id) DO NOTHING
),
u AS ({user_locks}
)"""

# A new live call with its participants and events; nothing at all when another live
# call won the room first (the partial unique index on calls(room_id)).
INSERT_CALL = (
    """
WITH c AS (
    INSERT INTO calls (id, tenant_id, room_id, type, mode, status, created_by, created_at,
                       ring_timeout_seconds, livekit_room, ring_deadline, media_deadline,
                       custom, livekit_cleanup_pending)
    VALUES (%(id)s, %(tenant)s, %(room)s, %(type)s, %(mode)s, %(status)s, %(created_by)s,
            %(created_at)s, %(ring_timeout_seconds)s, %(livekit_room)s, %(ring_deadline)s,
            %(media_deadline)s, %(custom)s, false)
    ON CONFLICT (room_id) WHERE status IN ('ringing', 'active') DO NOTHING
    RETURNING id
),
p AS (
    INSERT INTO call_participants (call_id, tenant_id, user_id, state, joined_at, left_at,
                                   ever_joined, ring_deadline)
    SELECT c.id, %(tenant)s, p.* FROM c, unnest(%(p_user)s::text[], %(p_state)s::text[],
        %(p_joined)s::timestamptz[], %(p_left)s::timestamptz[], %(p_ever)s::boolean[],
        %(p_ring)s::timestamptz[]) AS p
),"""
    + _WRITE_TAIL.format(gate=", c", user_locks=LOCK_USERS)
    + f"""
SELECT id, (SELECT pg_notify('{NOTIFY_CHANNEL}', string_agg(DISTINCT lane::text, ','))
            FROM o),
       (SELECT * FROM u)
FROM c"""
)

# A transition of a locked call.
SAVE = (
    """
WITH c AS (
    UPDATE calls SET status = %(status)s, answered_at = %(answered_at)s,
        ended_at = %(ended_at)s, end_reason = %(end_reason)s,
        ring_deadline = %(ring_deadline)s, media_deadline = %(media_deadline)s,
        media_used = %(media_used)s,
        livekit_cleanup_pending = livekit_cleanup_pending OR %(delete_room)s,
        version = version + 1
    WHERE id = %(id)s
),
p AS (
    INSERT INTO call_participants (call_id, tenant_id, user_id, state, joined_at, left_at,
                                   ever_joined, ring_deadline)
    SELECT %(id)s, %(tenant)s, p.* FROM unnest(%(p_user)s::text[], %(p_state)s::text[],
        %(p_joined)s::timestamptz[], %(p_left)s::timestamptz[], %(p_ever)s::boolean[],
        %(p_ring)s::timestamptz[]) AS p
    ON CONFLICT (call_id, user_id) DO UPDATE SET state = excluded.state,
        joined_at = excluded.joined_at, left_at = excluded.left_at,
        ever_joined = excluded.ever_joined, ring_deadline = excluded.ring_deadline
),"""
    + _WRITE_TAIL.format(gate="", user_locks=LOCK_USERS)
    + f"""
SELECT (SELECT * FROM u),
       (SELECT pg_notify('{NOTIFY_CHANNEL}', lanes)
        FROM (SELECT string_agg(DISTINCT lane::text, ',') AS lanes FROM o) changed
        WHERE lanes IS NOT NULL)"""
)


@dataclass(frozen=True)
class Due:
    """Calls a sweep looks for: `lock` takes them (SKIP LOCKED lets replicas share the
    sweep), `exists` says in one read, with no transaction, whether there are any (the
    usual answer, every sweep tick of every process, is no)."""

    where: str
    order: str

    @property
    def lock(self) -> str:
        return f"""
SELECT now(), {_CALL_COLUMNS} FROM calls c WHERE {self.where}
ORDER BY {self.order} LIMIT %(limit)s
FOR UPDATE SKIP LOCKED"""

    @property
    def exists(self) -> str:
        return f"EXISTS (SELECT 1 FROM calls c WHERE {self.where})"


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


LOCK_BY_MEDIA_ROOM = f"""
SELECT now(), {_CALL_COLUMNS} FROM calls c WHERE c.livekit_room = %(livekit_room)s
FOR UPDATE"""

PARTICIPANTS_OF = f"""
SELECT call_id, {", ".join(_PARTICIPANT_COLUMNS)}
FROM call_participants WHERE call_id = ANY(%(calls)s)"""

_OF_USER = f"""
SELECT now(), {_CALL_COLUMNS} FROM calls c
JOIN call_participants p ON p.call_id = c.id AND p.user_id = %(user)s AND {{whose}}
JOIN room_members m ON m.room_id = c.room_id AND m.user_id = %(user)s
WHERE c.tenant_id = %(tenant)s AND {_LIVE}
ORDER BY c.created_at"""
# A user's live calls, in rooms the user is still a member of (call.sync).
CALLS_OF_USER = _OF_USER.format(whose="p.state <> 'removed'")
# The calls ringing for a user now.
RINGING_FOR_USER = _OF_USER.format(whose="p.state = 'invited' AND p.ring_deadline > now()")

PENDING_CLEANUPS = """
SELECT id, livekit_room FROM calls WHERE livekit_cleanup_pending
ORDER BY ended_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED"""

CLEANED = "UPDATE calls SET livekit_cleanup_pending = false WHERE id = ANY(%(calls)s)"

# Which of some LiveKit rooms belong to a live call (reconciliation: the others go).
LIVE_MEDIA_ROOMS = f"""
SELECT ARRAY(SELECT c.livekit_room FROM calls c
             WHERE c.livekit_room = ANY(%(rooms)s::text[]) AND {_LIVE})"""


# --- rows to domain objects -----------------------------------------------------------


def _policy(row: Sequence[Any]) -> CallPolicy | None:
    enabled, max_participants, ring_timeout, default_type, busy_policy = row
    if enabled is None:
        return None
    return CallPolicy(
        enabled, max_participants, ring_timeout, default_type, busy_policy=busy_policy
    )


def _call(row: Sequence[Any], participants: Iterable[Participant] = ()) -> Call | None:
    if row[0] is None:
        return None
    (id_, tenant, room, type_, mode, status, created_by, created_at, ring_timeout, livekit_room,
     answered_at, ended_at, end_reason, ring_deadline, media_deadline, custom,
     media_used) = row  # fmt: skip
    return Call(
        id=id_,
        tenant_id=tenant,
        room_id=room,
        type=type_,
        mode=mode,
        status=status,
        created_by=created_by,
        created_at=created_at,
        ring_timeout_seconds=ring_timeout,
        livekit_room=livekit_room,
        answered_at=answered_at,
        ended_at=ended_at,
        end_reason=end_reason,
        ring_deadline=ring_deadline,
        media_deadline=media_deadline,
        custom=custom,
        participants=tuple(sorted(participants, key=lambda p: p.user_id)),
        media_used=media_used,
    )


def _participant(row: Sequence[Any]) -> Participant:
    return Participant(*row)


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


# --- reads ----------------------------------------------------------------------------


def _people(users: list[str], *columns: list[Any]) -> list[Participant]:
    return [Participant(*p) for p in zip(users, *columns, strict=True)]


async def _load(conn: AsyncConnection[Any], sql: str, **params: str) -> Loaded:
    head = await (await conn.execute(sql, params)).fetchone()
    assert head is not None  # FROM (SELECT 1): always one row
    call_at = 1 + _N_POLICY
    now, policy_row, call_row = head[0], head[1:call_at], head[call_at : call_at + _N_CALL]
    version, seen_version, room_exists, is_member = head[call_at + _N_CALL : _N_HEAD]
    arrays = head[_N_HEAD:]
    if call_row[0] is not None and version != seen_version:
        # We waited for the lock while a transition committed: read what it left.
        reread = {"call": call_row[0], "room": params["room"], "user": params["user"]}
        row = await (await conn.execute(REREAD, reread)).fetchone()
        assert row is not None
        is_member, arrays = row[0], row[1:]
    people = _people(*arrays)
    return Loaded(now, _policy(policy_row), _call(call_row, people), room_exists, is_member)


async def load_for_update(
    conn: AsyncConnection[Any], *, tenant: str, room: str, call: str, user: str, lock: bool = True
) -> Loaded:
    """The tenant's policy, the call (row-locked when `lock`) and its participants, and
    whether `user` is a member of the room: one statement (two after a lock wait)."""
    sql = LOCK_CALL if lock else READ_CALL
    return await _load(conn, sql, tenant=tenant, room=room, call=call, user=user)


async def lock_live_call(
    conn: AsyncConnection[Any], *, tenant: str, room: str, user: str
) -> Loaded:
    """The room's live call, locked, with the same reads as load_for_update."""
    return await _load(conn, LOCK_LIVE_CALL, tenant=tenant, room=room, user=user)


async def start_context(
    conn: AsyncConnection[Any], *, tenant: str, room: str, user: str, lock: bool = True
) -> StartContext:
    params = {"tenant": tenant, "room": room, "user": user}
    sql = START_CONTEXT if lock else READ_START_CONTEXT
    row = await (await conn.execute(sql, params)).fetchone()
    assert row is not None
    at = 1 + _N_POLICY
    return StartContext(row[0], _policy(row[1:at]), row[at], list(row[at + 1]), *row[at + 2 :])


async def bump(conn: AsyncConnection[Any], call_id: str) -> None:
    """Marks a locked call as changed (see REREAD) without changing anything else."""
    await conn.execute(BUMP, {"call": call_id})


async def which_due(conn: AsyncConnection[Any], dues: Sequence[Due]) -> list[bool]:
    """Whether each has calls due, in one read (a sweep tick's usual answer: none)."""
    row = await (await conn.execute("SELECT " + ", ".join(d.exists for d in dues))).fetchone()
    return [bool(flag) for flag in row] if row else [False] * len(dues)


async def lock_due(conn: AsyncConnection[Any], due: Due, limit: int) -> tuple[datetime, list[Call]]:
    """Calls past a deadline (DUE_RINGING, DUE_INVITES, DUE_NO_MEDIA) or ACTIVE ones,
    locked."""
    heads = await (await conn.execute(due.lock, {"limit": limit})).fetchall()
    if not heads:
        return datetime.min, []
    calls = await _attach_participants(conn, [h[1:] for h in heads])
    return heads[0][0], calls


async def lock_by_media_room(
    conn: AsyncConnection[Any], livekit_room: str
) -> tuple[datetime, Call | None]:
    head = await (await conn.execute(LOCK_BY_MEDIA_ROOM, {"livekit_room": livekit_room})).fetchone()
    if head is None:
        return datetime.min, None
    [call] = await _attach_participants(conn, [head[1:]])
    return head[0], call


async def calls_of_user(
    conn: AsyncConnection[Any], *, tenant: str, user: str, ringing: bool = False
) -> list[Call]:
    """The user's live calls, or (`ringing`) those ringing for the user now."""
    params = {"tenant": tenant, "user": user}
    sql = RINGING_FOR_USER if ringing else CALLS_OF_USER
    heads = await (await conn.execute(sql, params)).fetchall()
    return await _attach_participants(conn, [h[1:] for h in heads]) if heads else []


async def busy(
    conn: AsyncConnection[Any], *, tenant: str, room: str, caller: str, callee: str
) -> bool:
    """Whether the callee of a 1:1 start is joined in a live call elsewhere; locks both
    users first, so that nobody joins a call between this answer and the commit."""
    await conn.execute(LOCK_USERS, {"tenant": tenant, "lock_users": [caller, callee]})
    row = await (
        await conn.execute(BUSY, {"tenant": tenant, "room": room, "user": callee})
    ).fetchone()
    return bool(row and row[0])


async def members_among(conn: AsyncConnection[Any], room: str, users: list[str]) -> set[str]:
    row = await (await conn.execute(MEMBERS_AMONG, {"room": room, "users": users})).fetchone()
    return set(row[0]) if row else set()


async def _attach_participants(
    conn: AsyncConnection[Any], call_rows: list[Sequence[Any]]
) -> list[Call]:
    ids = [r[0] for r in call_rows]
    people: dict[str, list[Participant]] = {i: [] for i in ids}
    for row in await (await conn.execute(PARTICIPANTS_OF, {"calls": ids})).fetchall():
        people[row[0]].append(_participant(row[1:]))
    calls = [_call(r, people[r[0]]) for r in call_rows]
    return [c for c in calls if c is not None]


LIVE_COUNTS = "SELECT status, count(*) FROM calls WHERE status IN ('ringing', 'active') GROUP BY 1"


async def live_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    rows = await (await conn.execute(LIVE_COUNTS)).fetchall()
    return {"ringing": 0, "active": 0, **{r[0]: int(r[1]) for r in rows}}


async def try_lock(conn: AsyncConnection[Any], key: int) -> bool:
    """A transaction-scoped advisory lock, if free: one process at a time does the job."""
    row = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,))).fetchone()
    return bool(row and row[0])


async def lock_pending_cleanups(conn: AsyncConnection[Any], limit: int) -> list[tuple[str, str]]:
    rows = await (await conn.execute(PENDING_CLEANUPS, {"limit": limit})).fetchall()
    return [(r[0], r[1]) for r in rows]


async def mark_cleaned(conn: AsyncConnection[Any], call_ids: list[str]) -> None:
    await conn.execute(CLEANED, {"calls": call_ids})


async def live_media_rooms(conn: AsyncConnection[Any], rooms: list[str]) -> set[str]:
    row = await (await conn.execute(LIVE_MEDIA_ROOMS, {"rooms": rooms})).fetchone()
    return set(row[0]) if row else set()


# --- writes ---------------------------------------------------------------------------


# Mints a ring token: (call, user, ring deadline) -> token.
RingSigner = Callable[[Call, str, datetime], str]


def outbox_rows(
    call: Call,
    call_pb: Any,
    events: Iterable[Event],
    now: datetime,
    sign_ring: RingSigner | None = None,
) -> tuple[list[str], list[str], list[bytes]]:
    """Each event as outbox rows (id, subject, payload); large audiences in parts.

    The parts of one event share its event id (webhooks de-duplicate on it, so a
    tenant gets one delivery); each part has its own row id, the NATS message id. What
    the webhook needs whole (an invite's ring tokens, whose ring stopped) is in every
    part: a room has at most 1,000 members, so that stays far below NATS's limit.
    """
    ids: list[str] = []
    subjects: list[str] = []
    payloads: list[bytes] = []
    for e in events:
        event = events_pb2.CallEvent(
            id=new_id("evt"), type=e.type, tenant_id=call.tenant_id, user_id=e.actor, call=call_pb
        )
        event.occurred_at.FromDatetime(now)
        if e.reason is not None:
            event.reason = e.reason
        recipients = sorted(set(e.recipients))
        if e.ring_until is not None:
            assert sign_ring is not None, "an invite's ring tokens need a signer"
            event.ring.expires_at.FromDatetime(e.ring_until)
            for user in recipients:
                event.ring.tokens[user] = sign_ring(call, user, e.ring_until)
        if e.type == RING_STOPPED:
            event.user_ids.extend(recipients)
        chunks = [
            recipients[i : i + RECIPIENTS_PER_MESSAGE]
            for i in range(0, len(recipients), RECIPIENTS_PER_MESSAGE)
        ] or [[]]
        for part, chunk in enumerate(chunks):
            del event.recipient_user_ids[:]
            event.recipient_user_ids.extend(chunk)
            ids.append(event.id if part == 0 else f"{event.id}.{part}")
            subjects.append(subject(call.tenant_id, e.type))
            payloads.append(event.SerializeToString())
    return ids, subjects, payloads


def _participant_params(people: Sequence[Participant]) -> dict[str, list[Any]]:
    return {
        "p_user": [p.user_id for p in people],
        "p_state": [p.state for p in people],
        "p_joined": [p.joined_at for p in people],
        "p_left": [p.left_at for p in people],
        "p_ever": [p.ever_joined for p in people],
        "p_ring": [p.ring_deadline for p in people],
    }


def _write_params(
    before: Call | None,
    change: Change,
    call_pb: Any,
    now: datetime,
    sign_ring: RingSigner | None,
) -> dict[str, Any]:
    call = change.call
    ids, subjects, payloads = outbox_rows(call, call_pb, change.events, now, sign_ring)
    ended_now = call.status == "ended" and (before is None or before.status != "ended")
    return {
        "id": call.id,
        "tenant": call.tenant_id,
        "room": call.room_id,
        "o_id": ids,
        "o_subject": subjects,
        "o_payload": payloads,
        # The RPC's trace context for every event it wrote (None while tracing is off).
        "traceparent": tracing.current_traceparent(),
        "h_write": ended_now,
        "h_id": new_id("msg"),
        "h_sender": call.created_by,
        "h_parts": Jsonb(history.parts(call)) if ended_now else None,
        "delete_room": change.delete_room,
        "lock_users": _joiners(before, call),
    }


def _joiners(before: Call | None, after: Call) -> list[str]:
    """Users the change puts in the call: their user locks are taken (see LOCK_USERS)."""
    was = {p.user_id for p in before.participants if p.state == "joined"} if before else set()
    return [p.user_id for p in after.participants if p.state == "joined" and p.user_id not in was]


async def insert_call(
    conn: AsyncConnection[Any], change: Change, call_pb: Any, now: datetime, sign_ring: RingSigner
) -> bool:
    """Writes a new call with its participants and events; False when the room's live
    call slot was taken first (then nothing is written)."""
    call = change.call
    params = _write_params(None, change, call_pb, now, sign_ring)
    params.update(_participant_params(call.participants), **_lifecycle(call))
    params.update(
        type=call.type,
        mode=call.mode,
        created_by=call.created_by,
        created_at=call.created_at,
        ring_timeout_seconds=call.ring_timeout_seconds,
        livekit_room=call.livekit_room,
        custom=Jsonb(call.custom) if call.custom is not None else None,
    )
    return await (await conn.execute(INSERT_CALL, params)).fetchone() is not None


async def save(
    conn: AsyncConnection[Any],
    before: Call,
    change: Change,
    call_pb: Any,
    now: datetime,
    sign_ring: RingSigner | None = None,
) -> None:
    """Persists a transition of a locked call in one statement (none for a no-op).
    `sign_ring` mints the ring tokens of the invites it writes (none: it writes none)."""
    call = change.call
    old = {p.user_id: p for p in before.participants}
    changed = [p for p in call.participants if old.get(p.user_id) != p]
    if not (
        changed or change.events or change.delete_room or _lifecycle(call) != _lifecycle(before)
    ):
        return
    params = _write_params(before, change, call_pb, now, sign_ring)
    params.update(_participant_params(changed), **_lifecycle(call))
    await conn.execute(SAVE, params)


def _lifecycle(call: Call) -> dict[str, Any]:
    """The call row's columns a transition may change."""
    return {
        "status": call.status,
        "answered_at": call.answered_at,
        "ended_at": call.ended_at,
        "end_reason": call.end_reason,
        "ring_deadline": call.ring_deadline,
        "media_deadline": call.media_deadline,
        "media_used": call.media_used,
    }
