"""CallLogService: the tenant's call log (`GET /v1/calls`), one call (`GET /v1/calls/{id}`)
and usage (`GET /v1/usage`, services/calls/usage.py), served by the calls process.

Reads only, on a small pool of their own: a slow listing or a year of usage never takes a
connection a call transition is waiting for, and reads take no row locks.

A listing walks one index range newest first (the driver, chosen by the filters: the
user's participations, the room's calls, the tenant's live calls, or all the tenant's
calls) and keeps the rows that pass the other filters. It reads at most a fixed number
of index rows per page (`SCAN_BUDGET`), so a filter that matches rarely costs a bounded
amount per request; such a page may hold fewer calls than asked, even none, and its
`nextPageToken` continues after the last row read. Positions are `(createdAt, id)`,
which never change, so pages never skip or repeat a call while calls are created.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sendsar.calls.v1 import call_log_pb2 as pb
from sendsar.calls.v1 import call_log_pb2_grpc as pb_grpc
from sendsar.calls.v1 import calls_pb2

from services.calls import store, usage
from services.calls.convert import call_to_pb
from services.calls.domain import Call
from services.calls.log_filters import Filters, Window, page_size
from services.common import validation
from services.common.auth import Kind, Policy, current_principal
from services.common.db import open_pool
from services.common.errors import UNAVAILABLE, not_found
from services.common.logging import call_id_var
from services.common.page_tokens import PageTokens, Position
from services.common.rate_limit import rate_limited
from services.common.server import Registration
from services.common.settings import Settings

POLICIES = {
    "ListCalls": Policy.API_KEY,
    # The API key, a session of a member of the call's room, or the call's guest session.
    "GetCall": Policy.READ_CALL,
    "GetUsage": Policy.API_KEY,
}

POOL_SIZE = 4  # connections per process for these reads, apart from the call path's
POOL_WAIT_SECONDS = 5.0  # then 503: the reads of this process are all busy
USAGE_PER_TENANT = 2  # usage queries of one tenant in flight at once, per process

# Envoy's transcoder refuses a response above 4 MiB: a page stops at half of that, each
# call counted as chat's ListMessages counts a message (every protobuf byte as a
# six-byte JSON escape, plus 1 KiB of field names and zero values; docs/decisions.md).
PAGE_JSON_BUDGET = 2 * 1024 * 1024


def _json_bound(message: calls_pb2.Call) -> int:
    return 6 * message.ByteSize() + 1024


# Index rows one page may read when filters beyond the driver's must be checked: the
# tenant's index carries status and end reason (index-only), the others read the calls.
SCAN_BUDGET = {"tenant": 10_000, "live": 10_000, "room": 2_000, "user": 2_000}


@dataclass(frozen=True)
class Listing:
    """The statement of one page: which index it walks, whether other filters remain to
    be checked on what it reads, and its parameters."""

    driver: str
    sql: str
    residual: bool
    params: dict[str, Any]


def _range(created_at: str, call_id: str, filters: Filters, after: bool) -> str:
    """The driver's conditions on its (created_at, id) order: the window and the keyset."""
    parts = []
    if filters.start is not None:
        parts.append(f"AND {created_at} >= %(start)s")
    if filters.end is not None:
        parts.append(f"AND {created_at} < %(end)s")
    if after:
        parts.append(f"AND ({created_at}, {call_id}) < (%(after_at)s, %(after_id)s)")
    return " ".join(parts)


def listing(tenant: str, filters: Filters, after: Position | None, size: int) -> Listing:
    """A page of the tenant's log: `size` calls that pass the filters after `after`. The
    statement is a fixed text per filter set (so that psycopg prepares it): the rows of up
    to size + 1 calls that pass, in the log's order, read lazily from the first
    %(budget)s rows of the driver; and, when filters remain and fewer calls passed, the
    driver's last row in the budget (`hit` false), if it has one."""
    residual: list[str] = []
    if filters.user_id is not None:
        driver = "user"
        scan = f"""
        SELECT p.call_id AS id, p.call_created_at AS created_at FROM call_participants p
        WHERE p.tenant_id = %(tenant)s AND p.user_id = %(user)s
          {_range("p.call_created_at", "p.call_id", filters, after is not None)}
        ORDER BY p.call_created_at DESC, p.call_id DESC"""
        if filters.room_id is not None:
            residual.append("c.room_id = %(room)s")
        row = "c"  # the other filters are read from the call itself
    else:
        if filters.room_id is not None:
            driver, where = "room", "c.room_id = %(room)s AND c.tenant_id = %(tenant)s"
        elif filters.status in ("ringing", "active"):
            # ix_calls_live_tenant: the tenant's live calls only, however many ended.
            driver, where = "live", "c.tenant_id = %(tenant)s AND c.status IN ('ringing', 'active')"
        else:
            driver, where = "tenant", "c.tenant_id = %(tenant)s"
        scan = f"""
        SELECT c.id, c.created_at, c.status, c.end_reason FROM calls c
        WHERE {where} {_range("c.created_at", "c.id", filters, after is not None)}
        ORDER BY c.created_at DESC, c.id DESC"""
        row = "s"
    if filters.status is not None:
        residual.append(f"{row}.status = %(status)s")
    if filters.end_reason is not None:
        residual.append(f"{row}.end_reason = %(end_reason)s")
    join = "JOIN calls c ON c.id = s.id" if residual and row == "c" else ""
    # Rows come out of the driver in the log's order and the filter keeps it: LIMIT stops
    # reading at the last call needed (no ORDER BY here, which would read the budget out).
    hits = f"""
    SELECT s.id, s.created_at FROM ({scan} LIMIT %(budget)s) s {join}
    WHERE {" AND ".join(residual) or "true"} LIMIT %(limit)s"""
    # Read only when the page came out short: where the next page goes on from.
    edge = f"""
    UNION ALL
    SELECT id, created_at, false FROM ({scan} OFFSET %(edge)s LIMIT 1) e
    WHERE (SELECT count(*) FROM hits) < %(limit)s"""
    sql = f"""
WITH hits AS ({hits}
)
SELECT x.hit, c.* FROM (
    SELECT id, created_at, true AS hit FROM hits{edge if residual else ""}
) x JOIN calls c ON c.id = x.id AND c.tenant_id = %(tenant)s
ORDER BY x.hit DESC, x.created_at DESC, x.id DESC"""
    budget = SCAN_BUDGET[driver] if residual else size + 1
    params = {
        "tenant": tenant,
        "room": filters.room_id,
        "user": filters.user_id,
        "status": filters.status,
        "end_reason": filters.end_reason,
        "start": filters.start,
        "end": filters.end,
        "after_at": after.created_at if after else None,
        "after_id": after.id if after else None,
        "limit": size + 1,
        "budget": budget,
        "edge": budget - 1,
    }
    return Listing(driver, sql, bool(residual), params)


# One call: the tenant's, and with a session only if the user is in the call's room now.
GET_CALL = """
SELECT c.* FROM calls c
WHERE c.id = %(call)s AND c.tenant_id = %(tenant)s
  AND (%(user)s::text IS NULL OR EXISTS (
      SELECT 1 FROM room_members m WHERE m.room_id = c.room_id AND m.user_id = %(user)s))"""


def _position(row: Mapping[str, Any]) -> Position:
    return Position(row["created_at"], row["id"])


class CallLogService(pb_grpc.CallLogServiceServicer):
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], tokens: PageTokens):
        self.pool = pool
        self.tokens = tokens
        self.usage_running: dict[str, int] = {}  # tenant -> usage queries in flight here

    async def _read(
        self, sql: str, params: Mapping[str, Any], shown: int
    ) -> tuple[list[Any], list[Call]]:
        """The statement's rows, and the calls (with their participants) of its first
        `shown` rows that are not marked `hit = false`, on one connection."""
        try:
            async with self.pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                cur = conn.cursor(row_factory=dict_row)
                rows: list[store.Row] = list(await (await cur.execute(sql, params)).fetchall())
                picked = [r for r in rows if r.get("hit", True)][:shown]
                calls = await store.with_participants(conn, picked) if picked else []
        except PoolTimeout:
            raise UNAVAILABLE from None
        return rows, calls

    async def ListCalls(self, request: pb.ListCallsRequest, context: Any) -> pb.ListCallsResponse:
        tenant = current_principal().tenant_id
        filters = Filters.of(request)
        size = page_size(request)
        canonical = filters.canonical()
        after = (
            self.tokens.read(tenant, canonical, request.page_token) if request.page_token else None
        )
        plan = listing(tenant, filters, after, size)
        rows, calls = await self._read(plan.sql, plan.params, shown=size)
        hits = [r for r in rows if r["hit"]]
        edge = next((r for r in rows if not r["hit"]), None)
        response = pb.ListCallsResponse()
        room = PAGE_JSON_BUDGET
        for call in calls:
            message = call_to_pb(call)
            room -= _json_bound(message)
            if room < 0 and response.calls:
                break  # too large for one response: the next page starts with this call
            response.calls.append(message)
        shown = len(response.calls)
        following: Position | None = None
        if shown < len(hits):
            following = _position(hits[shown - 1])
        elif plan.residual and edge is not None:
            following = _position(edge)  # read the budget out: go on after what was read
        if following is not None:
            response.next_page_token = self.tokens.issue(tenant, canonical, following)
        return response

    async def GetCall(self, request: pb.GetCallRequest, context: Any) -> pb.GetCallResponse:
        principal = current_principal()
        call_id = validation.resource_id(request.call_id, "callId")
        user = principal.user_id if principal.kind is Kind.SESSION else None
        if principal.kind is Kind.GUEST and call_id != principal.call_id:
            raise not_found("CALL_NOT_FOUND", "call not found")  # a guest sees its call only
        _, calls = await self._read(
            GET_CALL, {"call": call_id, "tenant": principal.tenant_id, "user": user}, shown=1
        )
        if not calls:  # not there, another tenant's, or not the user's room: all alike
            raise not_found("CALL_NOT_FOUND", "call not found")
        call_id_var.set(call_id)
        return pb.GetCallResponse(call=call_to_pb(calls[0]))

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        tenant = current_principal().tenant_id
        window = Window.of(request)
        running = self.usage_running.get(tenant, 0)
        if running >= USAGE_PER_TENANT:
            raise rate_limited("usage")
        self.usage_running[tenant] = running + 1
        try:
            async with self.pool.connection(timeout=POOL_WAIT_SECONDS) as conn:
                return usage.to_pb(await usage.read(conn, tenant, window))
        except PoolTimeout:
            raise UNAVAILABLE from None
        finally:
            left = self.usage_running.pop(tenant) - 1
            if left:
                self.usage_running[tenant] = left


async def registration(settings: Settings) -> tuple[Registration, Callable[[], Awaitable[None]]]:
    """The service for the calls process to serve, and what closes it."""
    pool = await open_pool(settings, POOL_SIZE)
    servicer = CallLogService(pool, PageTokens(settings.SESSION_SIGNING_KEY, "call log"))

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_CallLogServiceServicer_to_server(servicer, server)

    name = pb.DESCRIPTOR.services_by_name["CallLogService"].full_name
    return Registration(add, name, POLICIES), pool.close
