"""`make bench`'s Socket.IO figures: the bridge at 10,000 sockets, fan-out, reconnect storm.

- **idle**: N sockets of N distinct users (spread over tenants of 2,000 users, as a
  replica holds many tenants' users), opened straight to one bridge process's port:
  the bridge's RSS growth per socket, and its CPU while they idle (Engine.IO pings).
- **storm**: those N sockets dropped at once and each reconnected at a random moment
  within `--storm-spread` seconds (each waits for its `call.sync`): the time from the
  drop to the last socket synced, errors, the CPU of the bridge, the calls service and
  PostgreSQL over it, PostgreSQL's transactions over it, and the bridge's own count of
  sync reads (how many sockets each read served). 1 % of the users are in an active call.
- **fan-out**: a 1,000-member room with every member connected through Envoy (as apps
  connect); a group call started by one member, timed from the start request to the
  last invitee's `call.invite`; the call is then ended, and so on `--fanout-starts` times.

The 10,000-socket figures connect to the bridge's port, not through Envoy: one Envoy
listener admits 10,000 downstream connections (its overload manager's cap, which the
bench must not raise for itself), and Envoy's cost per socket is its own figure (measured
at the fan-out's 1,000 sockets).
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from typing import Any

import aiohttp
import psycopg

from bench import procstat
from bench.fleet import Fleets
from services.common.auth import mint_session, parse_api_key
from services.common.settings import DEV_SESSION_KEY
from tests.conftest import Tenant, create_tenant
from tests.stack import Stack

USERS_PER_TENANT = 2000
LIVE_CALL_SHARE = 0.01  # of the storm's users, in an active 1:1 call
FANOUT_WARMUP = 2  # starts not counted (prepared statements, first-time paths)
FANOUT_PATIENCE = 30.0  # seconds for every invitee's event
FD_HEADROOM = 1000


def raise_fd_limit(sockets: int) -> None:
    """The bench's processes and the stack it starts (its children inherit the limit)
    hold one descriptor per socket: the soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < sockets + FD_HEADROOM:
        raise SystemExit(f"--sockets {sockets} needs `ulimit -Hn` ≥ {sockets + FD_HEADROOM}")
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def session(tenant: Tenant, user: str) -> str:
    """A session token as POST /v1/sessions mints it (naming the tenant's API key)."""
    parsed = parse_api_key(tenant.api_key)
    return mint_session(
        signing_key=DEV_SESSION_KEY,
        tenant_id=tenant.tenant_id,
        user_id=user,
        name=None,
        ttl_seconds=3 * 3600,
        api_key_id=parsed[0] if parsed else None,
    )[0]


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank: of 100 values, p99 is the second worst (of 30 it is the worst)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q) - 1)] if ordered else math.nan


async def _post(http: aiohttp.ClientSession, path: str, auth: str, body: Any) -> dict[str, Any]:
    async with http.post(path, json=body, headers={"Authorization": f"Bearer {auth}"}) as reply:
        answer: dict[str, Any] = await reply.json(content_type=None)
        if reply.status != 200:
            raise RuntimeError(f"POST {path}: {reply.status} {answer}")
        return answer


class SocketBench:
    def __init__(self, stack: Stack, load_processes: int, deflate: bool) -> None:
        self.stack = stack
        self.load_processes = load_processes
        self.deflate = deflate
        self.pids = {name: proc.pid for name, proc in stack.procs.items()}

    def cpu(self) -> dict[str, float]:
        seconds = procstat.cpu_seconds(self.pids.values())
        return {name: seconds[pid] for name, pid in self.pids.items()}

    def rss(self, name: str) -> int:
        return procstat.rss_bytes(self.pids[name])

    def pg_transactions(self) -> int:
        with psycopg.connect(self.stack.database_url) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                " WHERE datname = current_database()"
            ).fetchone()
            return int(row[0]) if row else 0

    def bridge_counters(self) -> dict[str, float]:
        """The bridge's Prometheus series (syncs, sync reads, closes, refusals, ...)."""

        async def scrape() -> str:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.stack.bridge_port}/metrics") as reply,
            ):
                return await reply.text()

        out: dict[str, float] = {}
        for line in asyncio.run(scrape()).splitlines():
            name, _, value = line.rpartition(" ")
            if line.startswith("socket_bridge_") and not any(
                part in name for part in ("_created", "_bucket")
            ):
                out[name] = float(value)
        return out

    # --- idle sockets and the reconnect storm ----------------------------------------

    def idle_and_storm(self, n: int, spread: float, idle_seconds: float) -> dict[str, Any]:
        tenants = [
            create_tenant(self.stack, f"sockets{i}") for i in range(math.ceil(n / USERS_PER_TENANT))
        ]
        users = [(t, f"u{i}") for i in range(USERS_PER_TENANT) for t in tenants][:n]
        live = asyncio.run(self._active_calls(tenants, min(n, USERS_PER_TENANT)))
        tokens = [session(t, u) for t, u in users]
        fleets = Fleets(self.load_processes, "127.0.0.1", self.stack.bridge_port)
        try:
            time.sleep(2)
            rss_before = self.rss("bridge")
            t0 = time.monotonic()
            opened = fleets.open(tokens, self.deflate)
            open_seconds = time.monotonic() - t0
            time.sleep(5)  # the last syncs' garbage goes, allocations settle
            rss_idle = self.rss("bridge")
            cpu0, w0 = self.cpu(), time.monotonic()
            time.sleep(idle_seconds)
            cpu1, w1 = self.cpu(), time.monotonic()
            idle = {
                "sockets": opened.sockets,
                "errors": opened.errors,
                "first_error": opened.first_error,
                "open_seconds": round(open_seconds, 1),
                "bridge_rss_mib": round(rss_idle / 2**20, 1),
                "bridge_kib_per_socket": (rss_idle - rss_before) / max(1, opened.sockets) / 1024,
                "bridge_cpu_ms_per_s": 1000 * (cpu1["bridge"] - cpu0["bridge"]) / (w1 - w0),
            }
            storm = self._storm(fleets, opened.sockets, spread)
            storm["users_in_calls"] = live
            storm["bridge_rss_mib_after"] = round(self.rss("bridge") / 2**20, 1)
        finally:
            fleets.close()
            fleets.exit()
        return {"idle": idle, "storm": storm}

    def _storm(self, fleets: Fleets, n: int, spread: float) -> dict[str, Any]:
        counters0, xacts0 = self.bridge_counters(), self.pg_transactions()
        at = time.monotonic() + 1.0
        time.sleep(max(0.0, at - time.monotonic()))
        cpu0 = self.cpu()
        result = fleets.storm(at, spread, timeout=120)
        cpu1, t1 = self.cpu(), time.monotonic()
        time.sleep(2)  # PostgreSQL's backends report their counts once idle for 1 s
        counters1, xacts1 = self.bridge_counters(), self.pg_transactions()
        window = t1 - at
        cpu = {name: cpu1[name] - cpu0[name] for name in ("bridge", "calls", "postgres")}
        return {
            "sockets": n,
            "spread_s": spread,
            "back": len(result.synced_at),
            "errors": result.errors,
            "first_error": result.first_error,
            "all_back_s": (max(result.synced_at) - at) if result.synced_at else None,
            "p50_back_s": _percentile([t - at for t in result.synced_at], 0.5),
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "cpu_share_of_a_core": {k: round(v / window, 2) for k, v in cpu.items()},
            "pg_transactions": xacts1 - xacts0,
            "bridge_counters": {
                k: v - counters0.get(k, 0.0)
                for k, v in counters1.items()
                if v != counters0.get(k, 0.0)
            },
        }

    async def _active_calls(self, tenants: list[Tenant], users_each: int) -> int:
        """Pairs of each tenant's first users, each pair in an active 1:1 call (their
        call.sync lists it)."""
        pairs_each = max(1, int(users_each * LIVE_CALL_SHARE) // 2)
        async with aiohttp.ClientSession(base_url=self.stack.rest) as http:

            async def call(tenant: Tenant, a: str, b: str) -> None:
                room = await _post(http, "/chat/rooms", tenant.api_key, {"members": [a, b]})
                calls = f"/chat/rooms/{room['id']}/calls"
                started = await _post(http, calls, session(tenant, a), {})
                await _post(http, f"{calls}/{started['call']['id']}/accept", session(tenant, b), {})

            await asyncio.gather(
                *(call(t, f"u{2 * k}", f"u{2 * k + 1}") for t in tenants for k in range(pairs_each))
            )
        return 2 * pairs_each * len(tenants)

    @staticmethod
    async def _arrivals(fleets: Fleets, event: str, call_id: str, expected: int) -> list[float]:
        arrived: list[float] = []
        deadline = time.monotonic() + FANOUT_PATIENCE
        while len(arrived) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"fan-out: {len(arrived)} of {expected} {event} in {FANOUT_PATIENCE} s"
                )
            await asyncio.sleep(0.01)
            arrived += await asyncio.to_thread(fleets.arrivals, event, call_id)
        return arrived

    # --- fan-out -----------------------------------------------------------------------

    def fanout(self, members: int, starts: int) -> dict[str, Any]:
        tenant = create_tenant(self.stack, "fanout")
        names = [f"m{i}" for i in range(members)]
        tokens = [session(tenant, m) for m in names]
        room = asyncio.run(self._room(tenant, names))
        fleets = Fleets(self.load_processes, "127.0.0.1", self.stack.envoy_port)
        try:
            envoy_before = self.rss("envoy")
            opened = fleets.open(tokens, self.deflate)
            if opened.errors:
                raise RuntimeError(f"fan-out sockets: {opened.first_error}")
            time.sleep(2)
            envoy_kib = (self.rss("envoy") - envoy_before) / opened.sockets / 1024
            latencies, firsts, cpu = asyncio.run(
                self._starts(fleets, tenant, room, tokens[0], members - 1, starts)
            )
        finally:
            fleets.close()
            fleets.exit()
        return {
            "members": members,
            "starts": len(latencies),
            "p50_ms": 1000 * _percentile(latencies, 0.5),
            "p99_ms": 1000 * _percentile(latencies, 0.99),
            "max_ms": 1000 * max(latencies),
            "first_socket_p50_ms": 1000 * _percentile(firsts, 0.5),
            "cpu_ms_per_start": {k: round(1000 * v / len(latencies), 1) for k, v in cpu.items()},
            "envoy_kib_per_socket": envoy_kib,
        }

    async def _room(self, tenant: Tenant, members: list[str]) -> str:
        async with aiohttp.ClientSession(base_url=self.stack.rest) as http:
            room = await _post(http, "/chat/rooms", tenant.api_key, {"members": members})
            return str(room["id"])

    async def _starts(
        self, fleets: Fleets, tenant: Tenant, room: str, caller: str, invitees: int, starts: int
    ) -> tuple[list[float], list[float], dict[str, float]]:
        latencies: list[float] = []
        firsts: list[float] = []
        calls = f"/chat/rooms/{room}/calls"
        async with aiohttp.ClientSession(base_url=self.stack.rest) as http:
            cpu0: dict[str, float] = {}
            for i in range(FANOUT_WARMUP + starts):
                if i == FANOUT_WARMUP:
                    cpu0 = self.cpu()
                sent = time.monotonic()
                call_id = (await _post(http, calls, caller, {}))["call"]["id"]
                arrived = await self._arrivals(fleets, "call.invite", call_id, invitees)
                if i >= FANOUT_WARMUP:
                    latencies.append(max(arrived) - sent)
                    firsts.append(min(arrived) - sent)
                await _post(http, f"{calls}/{call_id}/end", caller, {})
                # The next start begins on a quiet bridge: every invitee heard the end.
                await self._arrivals(fleets, "call.ended", call_id, invitees)
            cpu1 = self.cpu()
        return latencies, firsts, {k: cpu1[k] - cpu0[k] for k in cpu1}


def report(figures: dict[str, Any]) -> None:
    fan, idle, storm = figures.get("fanout"), figures.get("idle"), figures.get("storm")
    offer = "offering" if figures["deflate_offered"] else "not offering"
    print(f"  Socket.IO (clients {offer} permessage-deflate):")
    if fan:
        print(
            f"  fan-out to {fan['members'] - 1} sockets    p50 {fan['p50_ms']:6.1f}"
            f"  p99 {fan['p99_ms']:6.1f} ms  (start → last invite, {fan['starts']} starts;"
            f" first socket p50 {fan['first_socket_p50_ms']:.1f} ms)"
        )
        by = sorted(fan["cpu_ms_per_start"].items(), key=lambda x: -x[1])
        print("      CPU per start: " + ", ".join(f"{k} {v:.0f} ms" for k, v in by if v >= 1))
        print(f"      envoy {fan['envoy_kib_per_socket']:.1f} KiB per socket")
    if idle:
        print(
            f"  idle sockets (bridge direct) {idle['bridge_kib_per_socket']:8.1f} KiB per socket"
            f" at {idle['sockets']} sockets (RSS {idle['bridge_rss_mib']} MiB),"
            f" idle CPU {idle['bridge_cpu_ms_per_s']:.0f} ms/s; opened in"
            f" {idle['open_seconds']} s, errors {idle['errors']}"
        )
    if storm:
        cpu = storm["cpu_share_of_a_core"]
        print(
            f"  reconnect storm              {storm['back']} of {storm['sockets']} back in"
            f" {storm['all_back_s']:.1f} s (p50 {storm['p50_back_s']:.1f} s, spread"
            f" {storm['spread_s']:.0f} s), errors {storm['errors']}"
        )
        print(
            f"      CPU (share of a core): bridge {cpu['bridge']}, calls {cpu['calls']},"
            f" postgres {cpu['postgres']}; PostgreSQL transactions"
            f" {storm['pg_transactions']}; bridge {storm['bridge_counters']}"
        )
    for name in ("idle", "storm"):
        part = figures.get(name) or {}
        if part.get("first_error"):
            print(f"      {name} first error: {part['first_error']}")


def measure(stack: Stack, args: Any) -> dict[str, Any]:
    bench = SocketBench(stack, args.load_processes, args.deflate)
    figures: dict[str, Any] = {"deflate_offered": args.deflate}
    if args.fanout_members:
        figures["fanout"] = bench.fanout(args.fanout_members, args.fanout_starts)
    if args.sockets:
        figures.update(bench.idle_and_storm(args.sockets, args.storm_spread, args.idle_seconds))
    return figures
