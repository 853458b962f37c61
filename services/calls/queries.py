"""Reads of the calls model for other services, owned here so the model can change
without them: `call.sync` for the socket bridge."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from psycopg.rows import dict_row
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls.convert import call_to_pb
from services.calls.domain import Call, Participant
from services.calls.store import CALL_COLUMNS, PARTICIPANT_COLUMNS, PARTICIPANTS_OF

User = tuple[str, str]  # (tenant id, user id)
CallJson = dict[str, Any]

# Each (tenant, user)'s live calls in rooms the user is still a member of (a guest, who
# is no member, has the one call of its link), participations not removed: what
# `call.sync` lists. One statement for many users (call_participants' user_id index).
CALLS_OF_USERS = """
SELECT u.tenant_id AS sync_tenant, u.user_id AS sync_user, c.*
FROM unnest(%(tenants)s::text[], %(users)s::text[]) AS u(tenant_id, user_id)
JOIN call_participants p ON p.user_id = u.user_id AND p.state <> 'removed'
JOIN calls c ON c.id = p.call_id AND c.tenant_id = u.tenant_id
            AND c.status IN ('ringing', 'active')
LEFT JOIN room_members m ON m.room_id = c.room_id AND m.user_id = u.user_id
WHERE m.user_id IS NOT NULL OR starts_with(p.user_id, 'guest:')
ORDER BY c.created_at"""


async def calls_of_users(engine: AsyncEngine, users: list[User]) -> dict[User, list[CallJson]]:
    """The `call.sync` of each of these users (absent: none), each call rendered exactly
    as REST renders a Call: at most two statements, however many users."""
    async with engine.connect() as conn:
        # psycopg underneath SQLAlchemy: fixed statements, prepared after a few uses.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        cur = raw.cursor(row_factory=dict_row)
        params = {"tenants": [t for t, _ in users], "users": [u for _, u in users]}
        rows = await (await cur.execute(CALLS_OF_USERS, params)).fetchall()
        people: dict[str, list[Participant]] = {row["id"]: [] for row in rows}
        if people:
            await cur.execute(PARTICIPANTS_OF, {"calls": list(people)})
            for p in await cur.fetchall():
                people[p["call_id"]].append(
                    Participant(**{column: p[column] for column in PARTICIPANT_COLUMNS})
                )
    rendered: dict[str, CallJson] = {}  # a call two syncing users share is rendered once
    out: dict[User, list[CallJson]] = {}
    for row in rows:
        call_id = row["id"]
        if call_id not in rendered:
            call = Call(
                **{column: row[column] for column in CALL_COLUMNS},
                participants=tuple(sorted(people[call_id], key=lambda p: p.user_id)),
            )
            rendered[call_id] = json_format.MessageToDict(
                call_to_pb(call), always_print_fields_with_no_presence=True
            )
        out.setdefault((row["sync_tenant"], row["sync_user"]), []).append(rendered[call_id])
    return out


class SyncReads:
    """`call.sync` reads gathered, so that a reconnect storm is a few reads of many users
    rather than a read per socket: a sync asked for while `concurrency` reads are under
    way waits and goes with every other waiting one in the next read (at most `batch`
    users a read). A lone sync is read at once: nothing waits for a batch to fill."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch: int = 500,
        concurrency: int = 2,
        on_read: Callable[[int], None] = lambda users: None,
    ) -> None:
        self.engine = engine
        self.batch = batch
        self.concurrency = concurrency
        self.on_read = on_read  # told each read's number of users (metrics)
        self.waiting: dict[User, list[asyncio.Future[list[CallJson]]]] = {}
        self.reading = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def live_calls(self, tenant_id: str, user_id: str) -> list[CallJson]:
        """The user's live calls: the ringing or active calls the user takes part in (not
        removed from) whose room still has the user as a member."""
        future: asyncio.Future[list[CallJson]] = asyncio.get_running_loop().create_future()
        # Two devices of one user syncing together share the read.
        self.waiting.setdefault((tenant_id, user_id), []).append(future)
        if self.reading < self.concurrency:
            self._next()
        return await future

    def _next(self) -> None:
        users = list(itertools.islice(self.waiting, self.batch))
        batch = {user: self.waiting.pop(user) for user in users}
        self.reading += 1
        task = asyncio.get_running_loop().create_task(self._read(batch))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _read(self, batch: dict[User, list[asyncio.Future[list[CallJson]]]]) -> None:
        self.on_read(len(batch))
        try:
            found = await calls_of_users(self.engine, list(batch))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
        else:
            for user, futures in batch.items():
                for future in futures:
                    if not future.done():  # cancelled: its socket went away
                        future.set_result(found.get(user, []))
        finally:
            self.reading -= 1
            if self.waiting:
                self._next()
