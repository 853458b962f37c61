"""Every SQL statement of the call path, whole, against the real schema.

`pytest -s` prints each as PostgreSQL receives it (as `python -m services.calls.store`
does); each must plan with the parameters the store sends, so a statement that names a
column the table lacks, or a parameter the store does not pass, fails here rather than
in the middle of a transition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from services.calls import store
from services.calls.domain import Call, Participant
from tests.stack import Stack

_CALL = Call(
    id="call_x",
    tenant_id="tenant_x",
    room_id="room_x",
    type="audio",
    mode="direct",
    status="ringing",
    created_by="alice",
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    ring_timeout_seconds=45,
    livekit_room="call_x",
    custom={"k": "v"},
)
_WRITE = store.Write(
    call=_CALL,
    new=True,
    participants=[Participant("alice", "joined", joined_at=_CALL.created_at, ever_joined=True)],
    outbox=[store.OutboxRow("evt_x", "sendsar.tenant_x.calls.invite", b"\x00")],
    history=store.HistoryRow("msg_x", "alice", [{"type": "data-call"}]),
    user_locks=[1, 2],
    delete_room=False,
    traceparent=None,
)
# What the store's functions pass, by parameter name.
PARAMS: dict[str, Any] = {
    "tenant": "tenant_x",
    "room": "room_x",
    "call": "call_x",
    "user": "alice",
    "users": ["alice"],
    "user_locks": [1, 2],
    "limit": 1,
    "livekit_room": "call_x",
    "calls": ["call_x"],
    "rooms": ["call_x"],
    "settle": 10.0,
    "key": 1,
    "link": "link_x",
    "secret_hash": "h",
    "created_by": "alice",
    "ttl": 60,
    "max_uses": 5,
    "rate": 0.5,
    "burst": 20,
    **store.write_params(_WRITE),
}


@pytest.mark.parametrize("name", list(store.STATEMENTS))
def test_each_statement_plans_against_the_schema(stack: Stack, name: str) -> None:
    sql = store.STATEMENTS[name]
    print(f"\n-- {name}\n{sql.strip()};")
    assert "{" not in sql and "}" not in sql, "a part left unformatted"
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("EXPLAIN " + sql, PARAMS)


def test_rows_map_by_name_onto_the_domain(stack: Stack) -> None:
    """The call and participant dataclasses are the tables' rows: every field a column."""
    with psycopg.connect(stack.database_url) as conn:
        columns = {
            table: {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    (table,),
                )
            }
            for table in ("calls", "call_participants")
        }
    assert set(store.CALL_COLUMNS) <= columns["calls"]
    assert set(store.PARTICIPANT_COLUMNS) <= columns["call_participants"]
    assert set(store.MUTABLE_COLUMNS) <= set(store.CALL_COLUMNS)
