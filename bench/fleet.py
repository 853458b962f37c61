"""Load processes holding many sockets (bench/wsclient.py), driven by commands.

`Fleets` starts `n` spawned processes, each running uvloop and one `Fleet`; the parent
sends each a command and waits for every answer. Times are `time.monotonic()`, which is
system-wide: the parent's timestamps and the children's compare directly.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

import uvloop

from bench.wsclient import Client, open_socket

OPENING_AT_ONCE = 64  # per process: a connect storm is not what `open` measures
WATCHED = ("call.invite", "call.ended")
_CALL_ID = '"call":{"id":"'


@dataclass
class Opened:
    sockets: int = 0
    errors: int = 0
    first_error: str = ""


@dataclass
class Storm:
    """A fleet's share of a reconnect storm: when each socket had its call.sync again."""

    synced_at: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


class Fleet:
    def __init__(self, host: str, port: int, deflate: bool) -> None:
        self.host, self.port, self.deflate = host, port, deflate
        self.sockets: dict[str, Client] = {}  # by token
        # Arrivals of the watched events by (event, call id) (the fan-out figure).
        self.seen: dict[tuple[str, str], list[float]] = defaultdict(list)

    def on_event(self, client: Client, event: str, packet: str, arrived: float) -> None:
        if event in WATCHED:
            # The call's id without parsing the whole packet (a 1,000-member call's event
            # is ~40 KB of JSON; parsing each would make the load generator the bottleneck).
            at = packet.index(_CALL_ID) + len(_CALL_ID)
            self.seen[(event, packet[at : packet.index('"', at)])].append(arrived)

    async def _open(self, token: str) -> Client:
        return await open_socket(self.host, self.port, token, self.on_event, deflate=self.deflate)

    async def open(self, tokens: list[str]) -> Opened:
        result = Opened()
        gate = asyncio.Semaphore(OPENING_AT_ONCE)

        async def one(token: str) -> None:
            async with gate:
                try:
                    self.sockets[token] = await asyncio.wait_for(self._open(token), 60)
                    result.sockets += 1
                except Exception as exc:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)[:300]

        await asyncio.gather(*(one(t) for t in tokens))
        return result

    def arrivals(self, event: str, call_id: str) -> list[float]:
        return self.seen.pop((event, call_id), [])

    async def storm(self, at: float, spread: float, patience: float) -> Storm:
        """Drops every socket at `at`, then reconnects each at a random moment within
        `spread` seconds (as clients' randomized back-off spreads them), each given
        `patience` seconds to be synced again."""
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        old, self.sockets = self.sockets, {}
        for client in old.values():
            client.drop()
        result = Storm()

        async def back(token: str) -> None:
            await asyncio.sleep(max(0.0, at + random.uniform(0, spread) - time.monotonic()))
            try:
                client = await asyncio.wait_for(self._open(token), patience)
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or repr(exc)[:300]
                return
            self.sockets[token] = client
            result.synced_at.append(client.synced.result())

        await asyncio.gather(*(back(t) for t in old))
        return result

    def close(self) -> None:
        for client in self.sockets.values():
            if client.transport is not None:
                client.transport.close()
        self.sockets = {}


async def _serve(commands: Queue[Any], results: Queue[Any], host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    fleets: dict[bool, Fleet] = {}
    while True:
        name, args = await loop.run_in_executor(None, commands.get)
        try:
            if name == "open":
                tokens, deflate = args
                fleet = fleets.setdefault(deflate, Fleet(host, port, deflate))
                results.put(await fleet.open(tokens))
            elif name == "arrivals":
                results.put([t for f in fleets.values() for t in f.arrivals(*args)])
            elif name == "storm":
                results.put([await f.storm(*args) for f in fleets.values()])
            elif name == "close":
                for fleet in fleets.values():
                    fleet.close()
                fleets = {}
                await asyncio.sleep(0.5)  # the closes go out
                results.put(None)
            elif name == "exit":
                results.put(None)
                return
        except Exception as exc:  # report, do not hang the parent
            results.put(RuntimeError(repr(exc)[:500]))


def _main(commands: Queue[Any], results: Queue[Any], host: str, port: int) -> None:
    uvloop.run(_serve(commands, results, host, port))


class Fleets:
    """`n` load processes, each holding its share of the sockets to one address."""

    def __init__(self, n: int, host: str, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.channels = [(ctx.Queue(), ctx.Queue()) for _ in range(n)]
        self.procs = [
            ctx.Process(target=_main, args=(c, r, host, port), daemon=True)
            for c, r in self.channels
        ]
        for proc in self.procs:
            proc.start()

    def ask(self, name: str, args: list[Any] | None = None, timeout: float = 600) -> list[Any]:
        """Sends each process its command (args[i] to process i, or None to all) and
        returns their answers in order."""
        for i, (commands, _) in enumerate(self.channels):
            commands.put((name, None if args is None else args[i]))
        answers = [results.get(timeout=timeout) for _, results in self.channels]
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def open(self, tokens: list[str], deflate: bool = True) -> Opened:
        shares = [(tokens[i :: len(self.procs)], deflate) for i in range(len(self.procs))]
        total = Opened()
        for part in self.ask("open", shares):
            total.sockets += part.sockets
            total.errors += part.errors
            total.first_error = total.first_error or part.first_error
        return total

    def arrivals(self, event: str, call_id: str) -> list[float]:
        """When each socket got `event` of this call (since the last ask)."""
        asked = [(event, call_id)] * len(self.procs)
        return [t for part in self.ask("arrivals", asked) for t in part]

    def storm(self, at: float, spread: float, timeout: float) -> Storm:
        total = Storm()
        for answer in self.ask("storm", [(at, spread, timeout)] * len(self.procs)):
            for part in answer:
                total.synced_at += part.synced_at
                total.errors += part.errors
                total.first_error = total.first_error or part.first_error
        return total

    def close(self) -> None:
        self.ask("close")

    def exit(self) -> None:
        self.ask("exit", timeout=30)
        for proc in self.procs:
            proc.join(10)
