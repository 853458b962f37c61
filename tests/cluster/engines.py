"""What the cluster tests share: a steady call load through the real front door, a
tenant's webhook receiver, and readings of the outbox, the stream and the relay's lag."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import psycopg
from aiohttp import web
from nats.js.api import ConsumerConfig, DeliverPolicy
from sendsar.calls.v1 import events_pb2

from devstack.procs import free_ports
from services.calls.log_filters import rfc3339
from services.events import types
from tests.conftest import Tenant
from tests.integration.realtime import Device
from tests.stack import Stack, new_workdir

# A client's retry of an operation that failed retryably, as an app would.
RETRY_PAUSE_SECONDS = 0.2
GIVE_UP_SECONDS = 40.0


@dataclass(frozen=True)
class Reply:
    """One REST request of the load: what it was and how it was answered."""

    op: str  # start | accept | end | settings
    room: str
    call_id: str | None
    status: int
    reason: str | None
    sent: float  # monotonic
    answered: float


@dataclass
class Pair:
    """A 1:1 room: the caller starts, the callee (with a socket) accepts."""

    room: str
    caller: str  # session tokens
    callee: str
    device: Device


def _reason(reply: httpx.Response) -> str | None:
    try:
        details = reply.json().get("details", [])
    except ValueError:
        return None
    reasons = [d.get("reason") for d in details if d.get("@type", "").endswith("ErrorInfo")]
    return str(reasons[0]) if reasons else None


@dataclass
class CallLoad:
    """1:1 call lifecycles (start → accept → end) back to back in every pair's room, with
    `pause` seconds between two, and meanwhile reads of the tenant's settings (a SQLAlchemy
    engine's request, besides the call path's own pool). A step that fails is sent again
    (as an app retries a 503) until it succeeds, for at most GIVE_UP_SECONDS; an `end`
    answered 409 CALL_ENDED found the call already ended by an earlier attempt that did
    commit. Every answer is kept for the test to judge."""

    rest: str
    pairs: list[Pair]
    pause: float = 0.2
    replies: list[Reply] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # call ids, as start answered them
    ended: list[str] = field(default_factory=list)  # calls whose end was acknowledged

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.rest, timeout=30) as http:
            await asyncio.gather(
                *(self._room(http, pair, stop) for pair in self.pairs),
                self._settings(http, self.pairs[0], stop),
            )

    async def _room(self, http: httpx.AsyncClient, pair: Pair, stop: asyncio.Event) -> None:
        calls = f"/chat/rooms/{pair.room}/calls"
        while not stop.is_set():
            body = await self._until_done(http, "start", pair.room, None, calls, pair.caller)
            call_id = str(body["call"]["id"])
            self.started.append(call_id)
            await self._until_done(
                http, "accept", pair.room, call_id, f"{calls}/{call_id}/accept", pair.callee
            )
            await self._until_done(
                http, "end", pair.room, call_id, f"{calls}/{call_id}/end", pair.caller
            )
            self.ended.append(call_id)
            await asyncio.sleep(self.pause)

    async def _settings(self, http: httpx.AsyncClient, pair: Pair, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._until_done(
                http, "settings", pair.room, None, "/v1/tenant/settings", pair.caller, "GET"
            )
            await asyncio.sleep(self.pause)

    async def _until_done(
        self,
        http: httpx.AsyncClient,
        op: str,
        room: str,
        call_id: str | None,
        path: str,
        token: str,
        method: str = "POST",
    ) -> dict[str, Any]:
        give_up = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < give_up:
            sent = time.monotonic()
            try:
                reply = await http.request(
                    method,
                    path,
                    json={} if method == "POST" else None,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.TransportError:
                self.replies.append(Reply(op, room, call_id, 0, None, sent, time.monotonic()))
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
                continue
            reason = None if reply.status_code == 200 else _reason(reply)
            if reply.status_code == 200 and op == "start":
                call_id = str(reply.json()["call"]["id"])
            self.replies.append(
                Reply(op, room, call_id, reply.status_code, reason, sent, time.monotonic())
            )
            if reply.status_code == 200:
                return dict(reply.json())
            if op == "end" and reply.status_code == 409 and reason == "CALL_ENDED":
                return {}
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        raise AssertionError(f"{op} in {room} failed for {GIVE_UP_SECONDS} s: {self.replies[-1]}")

    def calls_of(self, room: str, sent_after: float = 0.0) -> set[str]:
        """The calls started in a room (acknowledged) by requests sent after a moment."""
        return {
            r.call_id
            for r in self.replies
            if r.room == room
            and r.op == "start"
            and r.status == 200
            and r.sent > sent_after
            and r.call_id is not None
        }

    def failures(self) -> list[Reply]:
        return [r for r in self.replies if r.status != 200 and r.reason != "CALL_ENDED"]


async def pairs(tenant: Tenant, rest: str, count: int) -> list[Pair]:
    """`count` 1:1 rooms, each callee with a connected Socket.IO device (through Envoy)."""
    made = []
    for i in range(count):
        caller, callee = f"caller{i}", f"callee{i}"
        room = await asyncio.to_thread(tenant.room, caller, callee)
        tokens = await asyncio.gather(
            asyncio.to_thread(tenant.session_token, caller),
            asyncio.to_thread(tenant.session_token, callee),
        )
        device = await Device(callee).connect(rest, tokens[1])
        made.append(Pair(room, tokens[0], tokens[1], device))
    return made


@dataclass
class Hooks:
    """A tenant's webhook endpoint recording every event it is sent."""

    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    arrived: dict[str, float] = field(default_factory=dict)  # event id -> first arrival (epoch s)
    _runner: web.AppRunner | None = None

    async def start(self) -> Hooks:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hooks"
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        self.events.append(event)
        self.arrived.setdefault(str(event["id"]), time.time())
        return web.Response(text="ok")

    def delays(self, since: float, until: float) -> list[float]:
        """Seconds from each event's occurredAt to its webhook's arrival, for the events
        that occurred between `since` and `until` (epoch seconds), sorted."""
        occurred = {
            str(e["id"]): rfc3339(e["occurredAt"], "occurredAt").timestamp() for e in self.events
        }
        return sorted(
            self.arrived[event_id] - at for event_id, at in occurred.items() if since <= at <= until
        )

    def ids(self) -> set[str]:
        return {str(e["id"]) for e in self.events}

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def subscribe(tenant: Tenant, url: str) -> None:
    with tenant.api() as api:
        reply = api.put("/v1/tenant/webhook", json={"url": url})
        assert reply.status_code == 200, reply.text


@dataclass(frozen=True)
class Outbox:
    rows: set[str]  # every row id (each row is one NATS message, its Nats-Msg-Id)
    unpublished: int
    events: dict[str, set[str]]  # tenant id -> its event ids


async def outbox(stack: Stack) -> Outbox:
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        rows = await (
            await conn.execute("SELECT id, tenant_id, payload, published_at FROM outbox")
        ).fetchall()
    events: dict[str, set[str]] = {}
    for _, tenant_id, payload, _ in rows:
        event = events_pb2.CallEvent()
        event.ParseFromString(bytes(payload))
        events.setdefault(tenant_id, set()).add(event.id)
    return Outbox(
        rows={row_id for row_id, *_ in rows},
        unpublished=sum(1 for *_, published in rows if published is None),
        events=events,
    )


async def stream_message_ids(nats_url: str) -> Counter[str]:
    """Every message of the event stream by its Nats-Msg-Id (the outbox row id), counted."""
    nc = await nats.connect(nats_url.split(","))
    try:
        js = nc.jetstream()
        last = (await js.stream_info(types.STREAM)).state.last_seq
        seen: Counter[str] = Counter()
        sub = await js.subscribe(
            types.SUBJECTS,
            stream=types.STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                seen[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1
                if msg.metadata.sequence.stream >= last:
                    return seen
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


CALLS_WORKERS = 2  # the relay runs in each: two relays share the lanes


@contextmanager
def running_stack(**options: Any) -> Iterator[Stack]:
    """The whole stack with the given engines, calls' metrics on (the relay's lag)."""
    stack = Stack(
        workdir=new_workdir(),
        metrics_ports={"calls": free_ports(CALLS_WORKERS)},
        workers={"calls": CALLS_WORKERS},
        **options,
    )
    try:
        stack.start_all()
        yield stack
    finally:
        stack.stop_all()


async def published_once(stack: Stack) -> None:
    """The relays' lag is back to 0 and the stream holds every outbox row exactly once."""
    await eventually(
        lambda: all(lag == 0 for lag in lag_seconds(stack)), "the relay's lag back to 0", 10
    )
    in_stream = await stream_message_ids(stack.nats_url)
    assert {msg_id: n for msg_id, n in in_stream.items() if n > 1} == {}, "published twice"
    assert set(in_stream) == (await outbox(stack)).rows


def lag_seconds(stack: Stack) -> list[float]:
    """outbox_lag_seconds of every calls worker (each runs a relay)."""
    base, lags = stack.metrics_ports["calls"], []
    for port in range(base, base + stack.workers.get("calls", 1)):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("outbox_lag_seconds "))
        lags.append(float(line.split()[1]))
    return lags


async def eventually(check: Any, what: str, within: float) -> None:
    """Waits until `check()` (sync or async) is true, polling. A check may return a
    false value that says what is missing (a non-empty string is true: use a tuple)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what} ({result!r})")
        await asyncio.sleep(0.25)
