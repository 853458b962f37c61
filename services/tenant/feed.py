"""TenantService's events feed: GET /v1/events, the tenant's events in commit order from
an opaque cursor, with `wait` long-polling.

Order and cursor. Outbox sequence numbers are taken when a row is inserted, not when its
transaction commits, so a transaction that took seq 10 may commit after one that took
seq 11: a reader that had returned 11 and went on "after 11" would skip 10 for good. The
feed therefore orders by the writing transaction's id (`outbox.xid`, xid8, set by the
database) and then seq, and returns only rows of transactions older than every
transaction still running (`xid < pg_snapshot_xmin(pg_current_snapshot())`, in the same
statement and snapshot as the read). Every transaction below that horizon has ended, so
nothing can ever appear before the returned rows; every transaction that commits later
has an xid at or above the horizon, so after the cursor. The cost: an event waits until
the transactions that began before it end (milliseconds here; a write transaction is
bounded by the statement and idle-in-transaction timeouts).

Only the first part of an event is read (the parts of one event share its id and carry
the same webhook body); each event comes back as its webhook body, recipients cleared.

Long polling. Waiting requests hold no database connection and run no loop of their
own: each process has one LISTEN connection on the outbox's NOTIFY channel (the one the
relays listen on) that wakes the waiters of the lanes a commit wrote to. A waiter whose
read found its tenant's next events held behind the horizon looks again after a short,
growing pause instead (the transaction holding the horizon may write no event, so no
NOTIFY would come). At most EVENTS_MAX_WAITS_PER_TENANT waits of one tenant run in a
process at once; more get 429. While the listener is down, waiters look every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

import grpc
from prometheus_client import Counter, Gauge
from sendsar.tenant.v1 import tenant_pb2 as pb
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import validation
from services.common.auth import current_principal
from services.common.db import connect_listener
from services.common.errors import ServiceError, invalid
from services.common.logging import log_fields
from services.common.models import OUTBOX_LANE_EXPRESSION, OUTBOX_LANES
from services.common.settings import Settings
from services.events import types
from services.tenant import cursors
from services.tenant.deliveries import event_types

log = logging.getLogger(__name__)

WAITS = Gauge("events_feed_waits", "Events feed requests waiting for events")
WAITS_REFUSED = Counter(
    "events_feed_waits_refused_total", "Events feed waits refused: too many of one tenant"
)

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_WAIT_SECONDS = 30
HELD_PAUSE_SECONDS = (0.02, 0.05, 0.1, 0.25, 0.5)  # then 0.5 s each
UNHEARD_SECONDS = 1.0  # the listener is down: look this often

_AFTER = "(xid, seq) > (CAST(:xid AS xid8), :seq)"
FEED = f"""
SELECT xid::text, seq, payload FROM outbox
WHERE tenant_id = :tenant AND {_AFTER}
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
  AND position('.' in id) = 0
  AND (CAST(:subjects AS text[]) IS NULL OR subject = ANY(:subjects))
ORDER BY xid, seq
LIMIT :limit"""
# Whether the tenant has events after the cursor that the horizon still holds back.
HELD = f"""
SELECT EXISTS (SELECT 1 FROM outbox WHERE tenant_id = :tenant AND {_AFTER}
               AND xid >= pg_snapshot_xmin(pg_current_snapshot()))"""
LANE = "SELECT " + OUTBOX_LANE_EXPRESSION.replace("tenant_id", "CAST(:tenant AS text)")


def encode_cursor(xid: int, seq: int) -> str:
    return cursors.encode("e", str(xid), str(seq))


def decode_cursor(token: str) -> tuple[int, int]:
    if not token:
        return 0, 0
    xid, seq = cursors.decode(token, "e", 2, "after")
    if not (xid.isdigit() and seq.isdigit() and int(xid) < 2**63 and int(seq) < 2**63):
        raise invalid("after", "is not a token returned by this API")
    return int(xid), int(seq)


def too_many_waits() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_WAITS",
        "too many requests of this tenant are waiting for events; wait for one to return",
        metadata={"scope": "events_wait"},
    )


class Wakeups:
    """The process's LISTEN connection and the waiters of each lane."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lanes: dict[int, set[asyncio.Event]] = defaultdict(set)
        self.listening = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())

    @contextlib.contextmanager
    def waiter(self, lane: int) -> Any:
        event = asyncio.Event()
        self.lanes[lane].add(event)
        try:
            yield event
        finally:
            self.lanes[lane].discard(event)

    def wake(self, payload: str) -> None:
        """A NOTIFY's payload lists the lanes written ("3,5"); empty: every lane."""
        lanes = [int(n) for n in payload.split(",") if n.isdigit()] or range(OUTBOX_LANES)
        for lane in lanes:
            for event in self.lanes.get(lane, ()):
                event.set()

    async def _listen(self) -> None:
        while True:
            try:
                conn = await connect_listener(self.settings)
                try:
                    await conn.execute(f"LISTEN {types.NOTIFY_CHANNEL}")
                    self.listening = True
                    self.wake("")  # what committed while nobody listened
                    async for notify in conn.notifies():
                        self.wake(notify.payload)
                finally:
                    self.listening = False
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "events feed listener down; waiters look every second",
                    extra=log_fields(error=type(exc).__name__),
                )
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class EventsFeed:
    """The ListEvents RPC of TenantService (a mixin: the servicer holds these attributes)."""

    settings: Settings
    engine: AsyncEngine
    wakeups: Wakeups
    waiting: dict[str, int]
    _lanes: dict[str, int]

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Any
    ) -> pb.ListEventsResponse:
        tenant_id = current_principal().tenant_id
        wanted: list[str] = []
        if request.types:
            wanted = event_types([t.strip() for t in request.types.split(",")], "types")
        limit = DEFAULT_LIMIT
        if request.HasField("limit"):
            limit = validation.int_range(request.limit, "limit", 1, MAX_LIMIT)
        wait = 0
        if request.HasField("wait"):
            wait = validation.int_range(request.wait, "wait", 1, MAX_WAIT_SECONDS)
        xid, seq = decode_cursor(request.after)
        params = {
            "tenant": tenant_id,
            "xid": str(xid),
            "seq": seq,
            "subjects": [types.subject(tenant_id, t) for t in wanted] or None,
            "limit": limit,
        }
        if not wait:
            return await self._read(params, request.after)
        if self.waiting.get(tenant_id, 0) >= self.settings.EVENTS_MAX_WAITS_PER_TENANT:
            WAITS_REFUSED.inc()
            raise too_many_waits()
        self.waiting[tenant_id] = self.waiting.get(tenant_id, 0) + 1
        WAITS.inc()
        try:
            return await self._wait(params, request.after, await self._lane(tenant_id), wait)
        finally:
            WAITS.dec()
            self.waiting[tenant_id] -= 1
            if not self.waiting[tenant_id]:
                del self.waiting[tenant_id]

    async def _read(self, params: dict[str, Any], after: str) -> pb.ListEventsResponse:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(FEED), params)).all()
        response = pb.ListEventsResponse(next_cursor=after or encode_cursor(0, 0))
        for _, _, payload in rows:
            event = response.events.add()
            event.ParseFromString(payload)
            del event.recipient_user_ids[:]
        if rows:
            response.next_cursor = encode_cursor(int(rows[-1][0]), rows[-1][1])
        return response

    async def _held(self, params: dict[str, Any]) -> bool:
        async with self.engine.connect() as conn:
            return bool((await conn.execute(text(HELD), params)).scalar())

    async def _lane(self, tenant_id: str) -> int:
        lane = self._lanes.get(tenant_id)
        if lane is None:
            async with self.engine.connect() as conn:
                lane = int((await conn.execute(text(LANE), {"tenant": tenant_id})).scalar_one())
            if len(self._lanes) > 10_000:
                self._lanes.clear()
            self._lanes[tenant_id] = lane
        return lane

    async def _wait(
        self, params: dict[str, Any], after: str, lane: int, seconds: int
    ) -> pb.ListEventsResponse:
        self.wakeups.start()
        deadline = time.monotonic() + seconds
        pauses = iter(HELD_PAUSE_SECONDS)
        with self.wakeups.waiter(lane) as woken:
            while True:
                woken.clear()  # before the read: a commit after it wakes the wait below
                response = await self._read(params, after)
                left = deadline - time.monotonic()
                if response.events or left <= 0:
                    return response
                pause = left
                if await self._held(params):
                    pause = min(pause, next(pauses, HELD_PAUSE_SECONDS[-1]))
                elif not self.wakeups.listening:
                    pause = min(pause, UNHEARD_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), pause)
