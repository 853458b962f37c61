"""Load generators for `make bench`, each run in a process of its own on uvloop.

They drive the public REST API through Envoy and Socket.IO like app clients do. Timing
uses the system-wide monotonic clock, so the parent's measurement window and the
children's timestamps agree. Each function returns plain data (picklable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop

from bench import sio


@dataclass
class Pair:
    """A 1:1 room and its two users' session tokens."""

    room: str
    caller: str
    callee: str


@dataclass
class Timings:
    """Operations that finished inside the window: their latencies (seconds), errors."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def _session(base_url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=base_url,
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
        timeout=aiohttp.ClientTimeout(total=30),
    )


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _post(http: aiohttp.ClientSession, path: str, token: str) -> dict[str, Any]:
    async with http.post(path, json={}, headers=_auth(token)) as reply:
        body: dict[str, Any] = await reply.json(content_type=None)
        if reply.status != 200:
            raise RuntimeError(f"{path.rsplit('/', 1)[-1]}: {reply.status} {body}")
        return body


async def lifecycle(http: aiohttp.ClientSession, pair: Pair) -> None:
    """start → accept → end of one 1:1 call."""
    calls = f"/chat/rooms/{pair.room}/calls"
    call_id = (await _post(http, calls, pair.caller))["call"]["id"]
    await _post(http, f"{calls}/{call_id}/accept", pair.callee)
    await _post(http, f"{calls}/{call_id}/end", pair.caller)


async def _closed_loop(
    base_url: str,
    op: Callable[[aiohttp.ClientSession, Any], Awaitable[None]],
    units: list[Any],
    window: tuple[float, float],
) -> Timings:
    """One worker per unit, each repeating `op` back to back until the window closes."""
    begin, end = window
    result = Timings()
    async with _session(base_url) as http:

        async def worker(unit: Any) -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    await op(http, unit)
                except Exception as exc:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)[:300]
                    await asyncio.sleep(0.05)
                    continue
                t1 = time.monotonic()
                if begin <= t1 <= end:
                    result.latencies.append(t1 - t0)

        await asyncio.gather(*(worker(u) for u in units))
    return result


async def _settings(http: aiohttp.ClientSession, token: str) -> None:
    async with http.get("/v1/tenant/settings", headers=_auth(token)) as reply:
        await reply.read()
        if reply.status != 200:
            raise RuntimeError(f"settings: {reply.status}")


def run_baseline(base_url: str, tokens: list[str], window: tuple[float, float]) -> Timings:
    """An authenticated no-op-ish request (GET settings with a session token)."""
    return uvloop.run(_closed_loop(base_url, _settings, tokens, window))


def run_lifecycles(base_url: str, pairs: list[Pair], window: tuple[float, float]) -> Timings:
    return uvloop.run(_closed_loop(base_url, lifecycle, pairs, window))


# --- ring latency ------------------------------------------------------------------------


async def _ring(base_url: str, pairs: list[Pair], rate: float, seconds: float) -> Timings:
    """Open loop: a start every 1/rate s; latency = POST sent → call.invite on the
    callee's socket. Each call is ended (by its caller) once it rang, freeing the room."""
    waiting: dict[str, asyncio.Future[float]] = {}

    def on_event(event: str, payload: Any, arrived: float) -> None:
        if event == "call.invite":
            future = waiting.get(payload["call"]["roomId"])
            if future is not None and not future.done():
                future.set_result(arrived)

    result = Timings()
    async with _session(base_url) as http:
        sockets = await asyncio.gather(
            *(sio.connect(http, base_url, p.callee, on_event) for p in pairs)
        )
        free: asyncio.Queue[Pair] = asyncio.Queue()
        for p in pairs:
            free.put_nowait(p)

        async def one() -> None:
            pair = free.get_nowait() if not free.empty() else None
            if pair is None:
                result.errors += 1
                result.first_error = result.first_error or "no free room: calls too slow"
                return
            loop = asyncio.get_running_loop()
            waiting[pair.room] = future = loop.create_future()
            try:
                sent = time.monotonic()
                call = (await _post(http, f"/chat/rooms/{pair.room}/calls", pair.caller))["call"]
                arrived = await asyncio.wait_for(future, 10)
                result.latencies.append(arrived - sent)
                await _post(http, f"/chat/rooms/{pair.room}/calls/{call['id']}/end", pair.caller)
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or repr(exc)[:300]
            finally:
                del waiting[pair.room]
                free.put_nowait(pair)

        tasks = []
        t0 = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        await asyncio.gather(*(s.close() for s in sockets))
    return result


def run_ring(base_url: str, pairs: list[Pair], rate: float, seconds: float) -> Timings:
    return uvloop.run(_ring(base_url, pairs, rate, seconds))
