"""The call log and usage through REST via the real Envoy: GET /v1/calls (every filter,
pages under concurrent starts, page tokens), GET /v1/calls/{id}, GET /v1/usage (exact
arithmetic from stored times, rejoins through the real call path), tenant isolation,
bad input, and what a usage query locks.

Times that need minutes are set with SQL on the stored rows (the database's clock is the
only clock of a call), never by sleeping."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from services.calls import call_log
from services.calls.log_filters import Filters
from services.calls.usage import USAGE
from services.common.page_tokens import Position
from tests.conftest import Tenant, error_reason
from tests.integration.test_calls_lifecycle import Users, act, ok, refused, start
from tests.stack import Stack

UNKNOWN_CALL = "call_" + "0123456789abcdef" * 2
DAY = datetime(2025, 3, 10, tzinfo=UTC)  # a day long before any call a test starts


# --- helpers -----------------------------------------------------------------------------


def listing(api: httpx.Client, **params: Any) -> dict[str, Any]:
    return ok(api.get("/v1/calls", params=params))


def every_page(api: httpx.Client, **params: Any) -> list[list[str]]:
    """The call ids of every page of a listing, following nextPageToken to the end."""
    pages, token = [], None
    while True:
        body = listing(api, **params, **({"pageToken": token} if token else {}))
        pages.append([c["id"] for c in body["calls"]])
        token = body["nextPageToken"]
        if not token:
            return pages


def listed(api: httpx.Client, **params: Any) -> list[str]:
    return [call_id for page in every_page(api, **params) for call_id in page]


def bad_field(reply: httpx.Response) -> str:
    """The field a 400 names (its BadRequest field violation)."""
    assert reply.status_code == 400, reply.text
    assert error_reason(reply) == "INVALID_ARGUMENT", reply.text
    [violation] = [
        v
        for d in reply.json()["details"]
        if d["@type"].endswith("google.rpc.BadRequest")
        for v in d["fieldViolations"]
    ]
    return str(violation["field"])


def direct(people: Users, room: str, caller: str, callee: str, how: str) -> str:
    """A 1:1 call that ends by `how`: hangup (answered), cancelled, declined; or stays
    ringing ("ringing") or active ("active")."""
    call_id = str(start(people(caller), room)["call"]["id"])
    if how in ("hangup", "active"):
        act(people(callee), room, call_id, "accept")
    if how == "hangup":
        act(people(caller), room, call_id, "end")
    elif how == "cancelled":
        act(people(caller), room, call_id, "end", reason="cancelled")
    elif how == "declined":
        act(people(callee), room, call_id, "decline")
    return call_id


def database(stack: Stack) -> psycopg.Connection[Any]:
    return psycopg.connect(stack.database_url, autocommit=True)


def set_created(db: psycopg.Connection[Any], call_id: str, when: datetime) -> None:
    """Moves a call's creation time (its participants carry a copy: the log's order)."""
    db.execute("UPDATE calls SET created_at = %s WHERE id = %s", (when, call_id))
    db.execute(
        "UPDATE call_participants SET call_created_at = %s WHERE call_id = %s", (when, call_id)
    )


def set_times(
    db: psycopg.Connection[Any],
    call_id: str,
    *,
    created: datetime,
    answered: datetime | None,
    ended: datetime | None,
    people: dict[str, tuple[datetime | None, datetime | None]],
) -> None:
    """Gives a call and its participants known times (joined_at, left_at per user)."""
    set_created(db, call_id, created)
    db.execute(
        "UPDATE calls SET answered_at = %s, ended_at = %s WHERE id = %s",
        (answered, ended, call_id),
    )
    for user, (joined, left) in people.items():
        db.execute(
            "UPDATE call_participants SET joined_at = %s, left_at = %s"
            " WHERE call_id = %s AND user_id = %s",
            (joined, left, call_id, user),
        )


def usage(api: httpx.Client, start_at: datetime, end_at: datetime) -> dict[str, Any]:
    return ok(api.get("/v1/usage", params={"from": start_at.isoformat(), "to": end_at.isoformat()}))


@contextmanager
def app_users(tenant: Tenant) -> Iterator[Users]:
    people = Users(tenant)
    try:
        yield people
    finally:
        people.close()


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex}"


@pytest.fixture
def users(tenant: Tenant) -> Iterator[Users]:
    with app_users(tenant) as people:
        yield people


@pytest.fixture
def api(tenant: Tenant) -> Iterator[httpx.Client]:
    with tenant.api() as client:
        yield client


# --- listing -------------------------------------------------------------------------------


def test_list_is_newest_first_in_pages_that_cover_every_call_once(
    tenant: Tenant, users: Users, api: httpx.Client
) -> None:
    room = tenant.room("alice", "bob")
    made = [direct(users, room, "alice", "bob", "cancelled") for _ in range(7)]
    pages = every_page(api, pageSize=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [c for p in pages for c in p] == made[::-1]
    body = listing(api)
    assert len(body["calls"]) == 7 and body["nextPageToken"] == ""  # default page: 50
    call = body["calls"][0]
    assert call["id"] == made[-1] and call["roomId"] == room and call["endReason"] == "cancelled"
    assert {p["userId"] for p in call["participants"]} == {"alice", "bob"}


def test_an_exact_last_page_has_no_token(tenant: Tenant, users: Users, api: httpx.Client) -> None:
    room = tenant.room("alice", "bob")
    for _ in range(4):
        direct(users, room, "alice", "bob", "cancelled")
    assert [len(p) for p in every_page(api, pageSize=2)] == [2, 2]


def test_every_filter(stack: Stack, tenant: Tenant, users: Users, api: httpx.Client) -> None:
    one = tenant.room("alice", "bob")
    two = tenant.room("carol", "dave")
    group = tenant.room("alice", "erin", "frank")
    hangup = direct(users, one, "alice", "bob", "hangup")
    declined = direct(users, two, "carol", "dave", "declined")
    cancelled = direct(users, one, "bob", "alice", "cancelled")
    grouped = str(start(users("alice"), group)["call"]["id"])  # erin, frank: invited only
    act(users("erin"), group, grouped, "decline")
    ringing = direct(users, two, "dave", "carol", "ringing")
    active = direct(users, one, "alice", "bob", "active")
    with database(stack) as db:  # one call an hour, oldest first
        for i, call_id in enumerate((hangup, declined, cancelled, grouped, ringing, active)):
            set_created(db, call_id, DAY + timedelta(hours=i))

    assert listed(api, roomId=one) == [active, cancelled, hangup]
    assert listed(api, roomId=two, pageSize=1) == [ringing, declined]
    assert listed(api, userId="alice") == [active, grouped, cancelled, hangup]
    assert listed(api, userId="frank") == [grouped]  # invited, never answered
    assert listed(api, userId="erin") == [grouped]  # declined
    assert listed(api, userId="nobody") == []
    assert listed(api, status="ringing") == [ringing]
    assert listed(api, status="active") == [active, grouped]
    assert listed(api, status="ended") == [cancelled, declined, hangup]
    assert listed(api, endReason="hangup") == [hangup]
    assert listed(api, endReason="declined") == [declined]
    assert listed(api, endReason="busy") == []
    # from inclusive, to exclusive, on createdAt
    h = lambda n: (DAY + timedelta(hours=n)).isoformat()  # noqa: E731
    assert listed(api, **{"from": h(1), "to": h(3)}) == [cancelled, declined]
    assert listed(api, **{"from": h(5)}) == [active]
    assert listed(api, to=h(1)) == [hangup]
    assert listed(api, **{"from": "2025-03-10T03:30:00+01:00"}) == [active, ringing, grouped]
    # filters combine with AND
    assert listed(api, userId="alice", roomId=one, status="ended") == [cancelled, hangup]
    assert listed(api, userId="bob", endReason="cancelled", to=h(3)) == [cancelled]
    assert listed(api, roomId=group, status="ended") == []


def test_ties_on_created_at_page_by_id(stack: Stack, tenant: Tenant, users: Users) -> None:
    room = tenant.room("alice", "bob")
    made = [direct(users, room, "alice", "bob", "cancelled") for _ in range(5)]
    with database(stack) as db:
        for call_id in made:
            set_created(db, call_id, DAY)
    with tenant.api() as api:
        pages = every_page(api, pageSize=2)
        assert [c for p in pages for c in p] == sorted(made, reverse=True)
        assert listed(api, userId="alice", pageSize=2) == sorted(made, reverse=True)


def test_pages_never_skip_or_repeat_while_calls_are_created(
    tenant: Tenant, users: Users, api: httpx.Client
) -> None:
    rooms = [tenant.room(f"a{i}", f"b{i}") for i in range(3)]
    before = [direct(users, rooms[i % 3], f"a{i % 3}", f"b{i % 3}", "cancelled") for i in range(12)]
    # Other users' calls keep being created, from another thread, while we page; and
    # between pages, deterministically, two more.
    stop = threading.Event()
    during: list[str] = []

    def keep_creating() -> None:
        with app_users(tenant) as others:
            room = tenant.room("x", "y")
            while not stop.is_set():
                during.append(direct(others, room, "x", "y", "cancelled"))

    creator = threading.Thread(target=keep_creating)
    creator.start()
    try:
        seen: list[str] = []
        token = None
        while True:
            body = listing(api, pageSize=5, **({"pageToken": token} if token else {}))
            seen += [c["id"] for c in body["calls"]]
            token = body["nextPageToken"]
            if not token:
                break
            for _ in range(2):
                during.append(direct(users, rooms[0], "a0", "b0", "cancelled"))
    finally:
        stop.set()
        creator.join()
    assert len(during) >= 4
    assert len(seen) == len(set(seen)), "a call was listed twice"
    assert seen[-len(before) :] == before[::-1], "a call that existed was skipped"
    assert set(seen) - set(before) <= set(during)


def test_page_token_is_bound_to_tenant_and_filters(new_tenant: Any) -> None:
    a, b = new_tenant(), new_tenant()
    with app_users(a) as a_users, app_users(b) as b_users:
        room_a, room_b = a.room("alice", "bob"), b.room("alice", "bob")
        for _ in range(3):
            direct(a_users, room_a, "alice", "bob", "cancelled")
            direct(b_users, room_b, "alice", "bob", "cancelled")
    with a.api() as api_a, b.api() as api_b:
        token = listing(api_a, pageSize=1)["nextPageToken"]
        assert token
        assert len(listing(api_a, pageSize=1, pageToken=token)["calls"]) == 1
        # another tenant, other filters, edited, made up
        assert bad_field(api_b.get("/v1/calls", params={"pageToken": token})) == "pageToken"
        other = {"pageToken": token, "status": "ended"}
        assert bad_field(api_a.get("/v1/calls", params=other)) == "pageToken"
        edited = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        for forged in (edited, "x", "czEyMw", "A" * 300, token + "="):
            reply = api_a.get("/v1/calls", params={"pageToken": forged})
            assert bad_field(reply) == "pageToken", forged
        # a page size of its own is fine: only the filters are bound
        assert len(listing(api_a, pageSize=2, pageToken=token)["calls"]) == 2


def test_a_rare_filter_reads_a_bounded_amount_per_page(
    stack: Stack, tenant: Tenant, api: httpx.Client
) -> None:
    """A page reads at most its driver's budget of index rows: past many calls that do
    not match, pages come out empty with a token, and the one that matches still comes."""
    room = tenant.room("alice", "bob")
    budget = call_log.SCAN_BUDGET
    many = budget["tenant"] * 2 + 500
    with database(stack) as db:  # rows as the call path writes them, many at once
        db.execute(
            """
            WITH c AS (
                INSERT INTO calls (id, tenant_id, room_id, type, mode, status, created_by,
                                   created_at, ring_timeout_seconds, livekit_room,
                                   livekit_cleanup_pending, ended_at, end_reason)
                SELECT id, %(tenant)s, %(room)s, 'audio', 'direct', 'ended', 'alice', at, 45,
                       id, false, at, CASE WHEN n = 0 THEN 'hangup' ELSE 'cancelled' END
                FROM generate_series(0, %(many)s) n,
                     LATERAL (SELECT 'call_' || md5(random()::text) AS id,
                                     %(day)s::timestamptz + n * interval '1 second' AS at) x
                RETURNING id, created_at
            )
            INSERT INTO call_participants (call_id, tenant_id, user_id, state, ever_joined,
                                           call_created_at)
            SELECT id, %(tenant)s, u, 'invited', false, created_at
            FROM c, unnest(ARRAY['alice', 'bob']) u
            """,
            {"tenant": tenant.tenant_id, "room": room, "many": many, "day": DAY},
        )
        # Statistics as autovacuum would soon have them: fresh from a bulk insert, the
        # planner may otherwise scan the tables (seen as a 504 on a loaded machine).
        db.execute("ANALYZE calls, call_participants")
    hung_up = listing(api, endReason="hangup", pageSize=100)
    assert hung_up["calls"] == [] and hung_up["nextPageToken"]
    pages = every_page(api, endReason="hangup", pageSize=100)
    assert [len(p) for p in pages] == [0, 0, 1]  # 10,000 rows a page, the oldest last
    by_user = every_page(api, userId="bob", endReason="hangup")
    assert len(by_user) == -(-(many + 1) // budget["user"])
    assert [c for p in by_user for c in p] == pages[-1]
    # without a filter beyond the driver's, pages are full
    assert [len(p) for p in every_page(api, userId="bob", pageSize=100)][:3] == [100] * 3


# --- one call ---------------------------------------------------------------------------


def test_get_call_by_key_and_by_members_only(
    new_tenant: Any, tenant: Tenant, users: Users, api: httpx.Client
) -> None:
    room = tenant.room("alice", "bob")
    call_id = direct(users, room, "alice", "bob", "hangup")
    by_key = ok(api.get(f"/v1/calls/{call_id}"))["call"]
    assert by_key["id"] == call_id and by_key["endReason"] == "hangup"
    assert ok(users("bob").get(f"/v1/calls/{call_id}"))["call"] == by_key
    # not a member (or no longer one), another tenant's, unknown: the same 404
    refused(users("mallory").get(f"/v1/calls/{call_id}"), 404, "CALL_NOT_FOUND")
    ok(api.delete(f"/chat/rooms/{room}/members/bob"))
    refused(users("bob").get(f"/v1/calls/{call_id}"), 404, "CALL_NOT_FOUND")
    refused(api.get(f"/v1/calls/{UNKNOWN_CALL}"), 404, "CALL_NOT_FOUND")
    other = new_tenant()
    with other.api() as other_api, app_users(other) as other_users:
        refused(other_api.get(f"/v1/calls/{call_id}"), 404, "CALL_NOT_FOUND")
        refused(other_users("alice").get(f"/v1/calls/{call_id}"), 404, "CALL_NOT_FOUND")
    assert bad_field(api.get("/v1/calls/call_nothex")) == "callId"


# --- isolation and access ---------------------------------------------------------------


def test_two_tenants_see_only_their_own(new_tenant: Any, stack: Stack) -> None:
    a, b = new_tenant(), new_tenant()
    with app_users(a) as a_users, app_users(b) as b_users:
        room_a, room_b = a.room("alice", "bob"), b.room("alice", "bob")
        call_a = direct(a_users, room_a, "alice", "bob", "hangup")
        call_b = direct(b_users, room_b, "alice", "bob", "hangup")
    with a.api() as api_a, b.api() as api_b:
        assert listed(api_a) == [call_a] and listed(api_b) == [call_b]
        assert listed(api_a, userId="alice") == [call_a]
        assert listed(api_a, roomId=room_b) == []
        window = (datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
        assert usage(api_a, *window)["calls"] == 1


def test_listing_and_usage_need_the_api_key(tenant: Tenant, users: Users) -> None:
    refused(users("alice").get("/v1/calls"), 403, "API_KEY_REQUIRED")
    refused(
        users("alice").get(
            "/v1/usage", params={"from": "2025-01-01T00:00:00Z", "to": "2025-01-02T00:00:00Z"}
        ),
        403,
        "API_KEY_REQUIRED",
    )
    with httpx.Client(base_url=tenant.rest) as anonymous:
        refused(anonymous.get("/v1/calls"), 401, "UNAUTHENTICATED")


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": 101}, "pageSize"),
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": -1}, "pageSize"),
        ({"status": "over"}, "status"),
        ({"endReason": "bored"}, "endReason"),
        ({"roomId": "room-1"}, "roomId"),
        ({"userId": "a b"}, "userId"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2025-03-10T00:00:00"}, "from"),  # no offset
        ({"from": "2025-03-10"}, "from"),
        ({"to": "2025-02-30T00:00:00Z"}, "to"),
        ({"from": "2025-03-10T00:00:00Z", "to": "2025-03-10T00:00:00Z"}, "to"),
    ],
)
def test_bad_list_filters_are_400_naming_the_field(
    api: httpx.Client, params: dict[str, Any], field: str
) -> None:
    assert bad_field(api.get("/v1/calls", params=params)) == field


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "from"),
        ({"from": "2025-03-10T00:00:00Z"}, "to"),
        ({"to": "2025-03-10T00:00:00Z"}, "from"),
        ({"from": "2025-03-10T00:00:00Z", "to": "2025-03-09T00:00:00Z"}, "to"),
        ({"from": "2024-03-10T00:00:00Z", "to": "2025-03-11T00:00:01Z"}, "to"),  # 366 d + 1 s
        ({"from": "2025-03-10T00:00:00Z", "to": "soon"}, "to"),
    ],
)
def test_bad_usage_windows_are_400_naming_the_field(
    api: httpx.Client, params: dict[str, Any], field: str
) -> None:
    assert bad_field(api.get("/v1/usage", params=params)) == field


def test_unknown_query_parameter_is_400(api: httpx.Client) -> None:
    reply = api.get("/v1/calls", params={"state": "ended"})
    assert reply.status_code == 400, reply.text


def test_a_366_day_window_is_allowed(api: httpx.Client) -> None:
    body = usage(api, DAY, DAY + timedelta(days=366))
    assert body == {
        "calls": 0,
        "answeredCalls": 0,
        "participantMinutes": 0,
        "byType": {
            "audio": {"calls": 0, "participantMinutes": 0},
            "video": {"calls": 0, "participantMinutes": 0},
        },
        "days": [],
    }


# --- usage -------------------------------------------------------------------------------


def test_usage_follows_the_stored_times_exactly(
    stack: Stack, tenant: Tenant, users: Users, api: httpx.Client
) -> None:
    t = DAY + timedelta(hours=10)
    s = lambda n: t + timedelta(seconds=n)  # noqa: E731
    one, two = tenant.room("alice", "bob"), tenant.room("carol", "dave")
    group = tenant.room("alice", "bob", "carol")
    answered = str(start(users("alice"), one, type="audio")["call"]["id"])
    act(users("bob"), one, answered, "accept")
    act(users("alice"), one, answered, "end")
    missed = direct(users, two, "carol", "dave", "cancelled")  # never answered: 0
    grouped = str(start(users("alice"), group, type="video")["call"]["id"])
    act(users("bob"), group, grouped, "accept")
    act(users("bob"), group, grouped, "leave")
    next_day = direct(users, one, "alice", "bob", "hangup")
    with database(stack) as db:
        # 1:1 audio: alice from the answer (10:00:30) and bob, both to 10:05:30: 2 * 300 s
        set_times(db, answered, created=s(0), answered=s(30), ended=s(330),
                  people={"alice": (s(0), s(330)), "bob": (s(30), s(330))})  # fmt: skip
        set_times(db, missed, created=s(60), answered=None, ended=s(90),
                  people={"carol": (s(60), s(90))})  # fmt: skip
        # group video: bob's first stint 10 s → 70 s (60 s), set before he comes back
        set_times(db, grouped, created=s(100), answered=s(110), ended=None,
                  people={"alice": (s(100), None), "bob": (s(110), s(170))})  # fmt: skip
    act(users("bob"), group, grouped, "accept")  # the rejoin: 60 s kept in joined_before
    act(users("alice"), group, grouped, "end")
    with database(stack) as db:
        # bob again 200 s → 260.1 s; alice from the answer (110 s) to the end (260.1 s)
        set_times(db, grouped, created=s(100), answered=s(110), ended=s(260.1),
                  people={"alice": (s(100), s(260.1)), "bob": (s(200), s(260.1))})  # fmt: skip
        end = s(86430.1)
        set_times(db, next_day, created=s(86400), answered=s(86410), ended=end,
                  people={"alice": (s(86400), end), "bob": (s(86410), end)})  # fmt: skip
        [[before]] = db.execute(
            "SELECT joined_before FROM call_participants WHERE call_id = %s AND user_id = 'bob'",
            (grouped,),
        ).fetchall()
    assert before == timedelta(seconds=60)
    # 1:1: 600 s; group: bob 60 + 60.1, alice 150.1; next day: alice 20.1, bob 20.1 s
    body = usage(api, DAY, DAY + timedelta(days=2))
    assert body == {
        "calls": 4,
        "answeredCalls": 3,
        "participantMinutes": 15.17,  # 910.4 s, rounded once (per participant: 15.18)
        "byType": {
            "audio": {"calls": 1, "participantMinutes": 10.0},
            "video": {"calls": 3, "participantMinutes": 5.17},  # 310.4 s
        },
        "days": [
            {"date": "2025-03-10", "calls": 3, "participantMinutes": 14.5},  # 870.2 s
            {"date": "2025-03-11", "calls": 1, "participantMinutes": 0.67},  # 40.2 s
        ],
    }
    # the window is on createdAt: from inclusive, to exclusive; days without calls left out
    later = usage(api, s(100), s(86400))
    assert (later["calls"], later["participantMinutes"]) == (1, 4.5)
    assert [d["date"] for d in usage(api, s(60), s(86401))["days"]] == ["2025-03-10", "2025-03-11"]
    assert usage(api, DAY - timedelta(days=3), DAY)["days"] == []
    # listings show what usage counted
    assert ok(api.get(f"/v1/calls/{grouped}"))["call"]["answeredAt"].startswith(
        "2025-03-10T10:01:50"
    )


def test_usage_counts_guests_minutes(
    stack: Stack, tenant: Tenant, users: Users, api: httpx.Client
) -> None:
    """A guest's time in a call counts like a member's (Guests and the lobby)."""
    tenant.patch_settings(guestsEnabled=True, lobby="off")
    t = DAY + timedelta(hours=12)
    s = lambda n: t + timedelta(seconds=n)  # noqa: E731
    room = tenant.room("alice", "bob", "carol")
    call_id = str(start(users("alice"), room, type="video")["call"]["id"])
    made = users("alice").post(f"/chat/rooms/{room}/calls/{call_id}/links", json={})
    with httpx.Client(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {ok(made)['token']}"}
    ) as knocking:
        guest = ok(knocking.post("/v1/guests", json={"name": "Ann"}))
    with httpx.Client(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {guest['token']}"}
    ) as as_guest:
        act(as_guest, room, call_id, "accept")
    act(users("alice"), room, call_id, "end")
    ann = f"guest:{guest['guestId']}"
    with database(stack) as db:
        # alice from the answer (10 s) to the end (130 s), Ann from 70 s: 120 + 60 s
        set_times(db, call_id, created=s(0), answered=s(10), ended=s(130),
                  people={"alice": (s(0), s(130)), ann: (s(70), s(130))})  # fmt: skip
    body = usage(api, DAY, DAY + timedelta(days=1))
    assert (body["calls"], body["answeredCalls"], body["participantMinutes"]) == (1, 1, 3.0)
    [listed_call] = listing(api, userId=ann)["calls"]
    assert listed_call["id"] == call_id


def test_a_live_call_counts_up_to_now(
    stack: Stack, tenant: Tenant, users: Users, api: httpx.Client
) -> None:
    room = tenant.room("alice", "bob")
    call_id = direct(users, room, "alice", "bob", "active")
    with database(stack) as db:
        with db.transaction():  # one now() for both statements
            [[moved_at]] = db.execute(
                "UPDATE calls SET created_at = now() - interval '10 min',"
                " answered_at = now() - interval '9 min' WHERE id = %s RETURNING now()",
                (call_id,),
            ).fetchall()
            db.execute(
                "UPDATE call_participants SET call_created_at = now() - interval '10 min',"
                " joined_at = now() - interval '10 min' WHERE call_id = %s",
                (call_id,),
            )
        body = usage(api, moved_at - timedelta(hours=1), moved_at + timedelta(hours=1))
        [[after]] = db.execute("SELECT now()").fetchall()
    # both from the answer (9 min before) to the usage query's now: 18 min and a bit
    assert body["answeredCalls"] == 1
    slack = 2 * (after - moved_at).total_seconds() / 60
    assert 18 <= body["participantMinutes"] <= 18 + slack + 0.01
    act(users("alice"), room, call_id, "end")


# --- what the statements do on the real schema -------------------------------------------


def test_every_listing_statement_runs(stack: Stack) -> None:
    """Each filter set's statement (and its continuation) on the real schema."""
    values: dict[str, Any] = {
        "room_id": "rm_" + "0" * 32,
        "user_id": "alice",
        "end_reason": "hangup",
        "start": DAY,
        "end": DAY + timedelta(days=1),
    }
    with database(stack) as db:
        for chosen in itertools.product((False, True), repeat=len(values)):
            given = {k: v for (k, v), on in zip(values.items(), chosen, strict=True) if on}
            for status, after in itertools.product((None, "ended", "active"), (False, True)):
                filters = Filters(**given, status=status)
                position = Position(DAY, new_call_id()) if after else None
                plan = call_log.listing("tn_x", filters, position, size=2)
                assert db.execute(plan.sql, plan.params).fetchall() == [], plan.sql


def test_a_usage_query_holds_no_lock_a_transition_waits_for(
    stack: Stack, tenant: Tenant, users: Users
) -> None:
    """Usage reads in a snapshot with share locks on the tables only (no row locks): with
    one held open inside a transaction, whole call lifecycles still go through."""
    with database(stack) as db, db.transaction():
        params = {"tenant": tenant.tenant_id, "start": DAY, "end": DAY + timedelta(days=366)}
        db.execute(USAGE, params).fetchall()
        [[pid]] = db.execute("SELECT pg_backend_pid()").fetchall()
        held = db.execute(
            "SELECT DISTINCT locktype, mode FROM pg_locks WHERE pid = %s AND granted", (pid,)
        ).fetchall()
        assert {mode for _, mode in held} <= {"AccessShareLock", "ExclusiveLock"}, held
        # ExclusiveLock: only the transaction's own id (virtualxid), never a row or table
        assert {kind for kind, mode in held if mode == "ExclusiveLock"} <= {"virtualxid"}, held
        room = tenant.room("alice", "bob")
        for how in ("hangup", "declined", "cancelled"):
            direct(users, room, "alice", "bob", how)


def test_participants_written_by_an_older_release_get_the_call_time(
    stack: Stack, tenant: Tenant
) -> None:
    """Expand/contract: a release before 0010 inserts participants without
    call_created_at; the trigger fills it from the call, so the user filter finds them."""
    room = tenant.room("alice", "bob")
    call_id = new_call_id()
    with database(stack) as db:
        db.execute(
            """
            WITH c AS (
                INSERT INTO calls (id, tenant_id, room_id, type, mode, status, created_by,
                                   created_at, ring_timeout_seconds, livekit_room,
                                   livekit_cleanup_pending, ended_at, end_reason)
                VALUES (%(id)s, %(tenant)s, %(room)s, 'audio', 'direct', 'ended', 'alice',
                        %(at)s, 45, %(id)s, false, %(at)s, 'cancelled')
                RETURNING id
            )
            INSERT INTO call_participants (call_id, tenant_id, user_id, state, ever_joined)
            SELECT id, %(tenant)s, u, 'invited', false FROM c, unnest(ARRAY['alice', 'bob']) u
            """,
            {"id": call_id, "tenant": tenant.tenant_id, "room": room, "at": DAY},
        )
    with tenant.api() as api:
        assert listed(api, userId="bob") == [call_id]
