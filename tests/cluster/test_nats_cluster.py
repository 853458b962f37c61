"""The event stream on a 3-node JetStream cluster (R3), as production runs it: the
stream's leader killed (-9) under a steady call load and started again, then a follower
frozen (SIGSTOP) for 10 s, and nothing is lost, doubled or left behind, and the webhooks
of what happened during the freeze do not wait tens of seconds after it (issue 31)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator

import nats
import pytest

from services.events import types
from tests.cluster.engines import (
    CallLoad,
    Hooks,
    eventually,
    outbox,
    pairs,
    published_once,
    running_stack,
    subscribe,
)
from tests.conftest import create_tenant
from tests.integration.realtime import Device
from tests.stack import NatsCluster, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FREEZE_SECONDS = 10
# Not a speed figure: a bound that tells a freeze's own length (plus the clients' move
# to another node) from a backlog that waits in PostgreSQL (issue 31: p99 50 s).
WEBHOOK_DELAY_BOUND = 25.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    settings = {"NATS_STREAM_REPLICAS": "3", "NATS_PING_INTERVAL_SECONDS": "2"}
    with running_stack(nats_nodes=3, settings=settings) as s:
        yield s


async def stream_cluster(stack: Stack) -> tuple[str, int, list[tuple[str, bool]]]:
    """The stream's leader, replica count and followers (name, current), as NATS says."""
    nc = await nats.connect(stack.nats_url.split(","), connect_timeout=2)
    try:
        info = await nc.jetstream().stream_info(types.STREAM)
    finally:
        await nc.close()
    cluster = info.cluster
    assert cluster is not None and cluster.leader is not None
    followers = [(str(p.name), bool(p.current)) for p in cluster.replicas or []]
    return cluster.leader, info.config.num_replicas or 1, followers


def service_connections(cluster: NatsCluster, node: int) -> list[str]:
    """The names of the client connections a node holds (NATS's /connz)."""
    url = f"http://127.0.0.1:{cluster.monitor_ports[node]}/connz"
    with urllib.request.urlopen(url, timeout=2) as reply:
        conns = json.loads(reply.read())["connections"] or []
    return [str(c.get("name", "")) for c in conns]


async def test_a_leader_killed_and_a_follower_frozen_lose_and_double_nothing(
    stack: Stack,
) -> None:
    cluster = stack.nats_cluster
    assert cluster is not None
    tenant = await asyncio.to_thread(create_tenant, stack)
    hooks = await Hooks().start()
    await asyncio.to_thread(subscribe, tenant, hooks.url)
    load = CallLoad(stack.rest, await pairs(tenant, stack.rest, 4))
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    began = time.monotonic()
    try:
        leader, replicas, _ = await stream_cluster(stack)
        assert replicas == 3
        await asyncio.sleep(3)

        # The stream's leader dies mid-load. Events go on flowing with it down (the other
        # two hold every event and elect a leader); it comes back and catches up.
        killed = cluster.node(leader)
        cluster.kill(killed)
        kill_at = time.monotonic()
        await flowing(load, hooks, since=kill_at, what="with the leader killed")
        after_kill = time.monotonic() - kill_at
        assert (await stream_cluster(stack))[0] != leader
        cluster.start(killed)
        await eventually(lambda: _all_current(stack), "all three replicas current", within=30)

        # The follower the bridge reads from freezes (its kernel keeps TCP up): unanswered
        # pings make the bridge and whoever else is there move to another node.
        # Frozen for FREEZE_SECONDS at least, as issue 31 measured it: the webhooks of what
        # happened meanwhile must not then wait tens of seconds in PostgreSQL.
        frozen = cluster.node(await _bridge_on_a_follower(stack))
        cluster.freeze(frozen)
        freeze_at, freeze_wall = time.monotonic(), time.time()
        try:
            await flowing(load, hooks, since=freeze_at, what="with a follower frozen")
            after_freeze = time.monotonic() - freeze_at
            await asyncio.sleep(max(0.0, FREEZE_SECONDS - after_freeze))
        finally:
            cluster.thaw(frozen)
        thaw_wall = time.time()
        await asyncio.sleep(5)  # load goes on after the thaw
    finally:
        stop.set()
        await running
    load_seconds = time.monotonic() - began

    # Nothing failed at the front door while NATS lost nodes.
    assert load.failures() == []
    assert len(load.started) >= 20, "too little load to prove anything"

    async def converged() -> bool:
        box = await outbox(stack)
        return box.unpublished == 0 and box.events[tenant.tenant_id] <= hooks.ids()

    await eventually(converged, "every event published and at its webhook", within=45)
    delays = hooks.delays(since=freeze_wall, until=thaw_wall + 5)
    assert delays, "no event occurred around the freeze"
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
    assert p99 < WEBHOOK_DELAY_BOUND, (
        f"webhooks of events around a {FREEZE_SECONDS} s freeze took p50 {p50:.1f} s,"
        f" p99 {p99:.1f} s (before issue 31: p50 36 s, p99 50 s)"
    )
    # JetStream kept one message per outbox row: re-publishes were de-duplicated.
    await published_once(stack)
    for pair in load.pairs:
        calls, device = load.calls_of(pair.room), pair.device

        def invited(d: Device = device, c: set[str] = calls) -> bool:
            return {e["call"]["id"] for e in d.of("call.invite")} >= c

        await eventually(invited, f"every call.invite at {device.name}", within=20)
        invites = [e["call"]["id"] for e in device.of("call.invite")]
        assert sorted(invites) == sorted(calls), "each call.invite exactly once"

    print(
        f"\nNATS cluster: {len(load.started)} calls in {load_seconds:.1f} s of load; every room's"
        f" next call.invite at its socket and webhook {after_kill:.1f} s after the stream's"
        f" leader was killed, {after_freeze:.1f} s after the bridge's node froze; nothing lost"
        f" or doubled; webhooks of the {len(delays)} events around a {FREEZE_SECONDS} s freeze"
        f" arrived p50 {p50:.1f} s, p99 {p99:.1f} s after they occurred"
    )
    for pair in load.pairs:
        await pair.device.close()
    await hooks.stop()


async def flowing(load: CallLoad, hooks: Hooks, since: float, what: str) -> None:
    """Waits until every room has a call started after `since` whose call.invite reached
    the callee's socket and the tenant's webhook."""

    def arrived() -> bool:
        hooked = {e["call"]["id"] for e in hooks.events if e["type"] == "call.invite"}
        for pair in load.pairs:
            later = load.calls_of(pair.room, sent_after=since)
            invited = {e["call"]["id"] for e in pair.device.of("call.invite")}
            if not later & invited & hooked:
                return False
        return True

    await eventually(arrived, f"events flowing {what}", within=30)


async def _bridge_on_a_follower(stack: Stack) -> str:
    """The node the bridge is connected to, made a follower of the stream (the leader
    steps down while it is that node)."""
    cluster = stack.nats_cluster
    assert cluster is not None
    for _ in range(10):
        nodes = [
            n
            for n in range(len(cluster.ports))
            if "socket-bridge" in service_connections(cluster, n)
        ]
        leader, _, _ = await stream_cluster(stack)
        if nodes and cluster.name(nodes[0]) != leader:
            return cluster.name(nodes[0])
        if nodes:
            nc = await nats.connect(stack.nats_url.split(","))
            try:
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{types.STREAM}", b"", timeout=5)
            finally:
                await nc.close()
        await eventually(lambda: _all_current(stack), "a leader and current followers", 30)
    raise AssertionError("the bridge stays on the stream's leader")


async def _leader_is_not(stack: Stack, old: str) -> bool:
    try:
        leader, _, _ = await stream_cluster(stack)
    except Exception:
        return False
    return leader != old


async def _all_current(stack: Stack) -> bool:
    try:
        _, _, followers = await stream_cluster(stack)
    except Exception:
        return False
    return len(followers) == 2 and all(current for _, current in followers)
