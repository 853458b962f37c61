"""Several replicas behind one Envoy, as in Kubernetes: two calls, two socket-bridge and two
webhook processes share one PostgreSQL and one NATS; tenant and chat run once.

Envoy balances round-robin over both replicas of each upstream and carries the production
route and cluster hardening (devstack.envoy_k8s.harden: retries only where no service saw
the request, active gRPC health checks), so what holds here is what the cluster runs.

Bounds stated and checked:
- a calls replica stopped with SIGTERM exits within its grace period; no request sent
  meanwhile fails, every accepted request's effect is in the database, and every ringing
  call still times out within RING + SLACK of its start;
- the outbox relay's current publisher killed with SIGKILL: every event, those committed
  before the kill included, reaches the sockets within RELAY_BOUND seconds of the kill,
  each exactly once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from aiohttp import web
from sendsar.calls.v1 import events_pb2

from devstack import envoy, envoy_k8s
from devstack.procs import ROOT, Proc, free_port, http_ok, python_env, wait_until
from tests.conftest import Tenant, create_tenant
from tests.integration.realtime import Device
from tests.stack import Stack, new_workdir

pytestmark = pytest.mark.slow

CALLS = ("calls-1", "calls-2")
BRIDGES = ("bridge-1", "bridge-2")
WEBHOOKS = ("webhooks-1", "webhooks-2")
RING = 5  # the shortest ring window a tenant may set
SLACK = 2.0  # sweep interval, a busy 2-core machine
GRACE = 5.0  # SHUTDOWN_GRACE_SECONDS of the calls replicas
RELAY_BOUND = 5.0  # the survivor's relay wakes on NOTIFY or its 0.5 s poll; PostgreSQL
# frees a killed client's transaction lock as soon as the kernel closes its socket


# --- the stack -------------------------------------------------------------------------------


class ReplicaStack(Stack):
    """The test stack with two processes of each scalable service."""

    def __init__(self) -> None:
        super().__init__(workdir=new_workdir())
        self.bridge_ports = {name: free_port() for name in BRIDGES}
        self.metrics_ports = {name: free_port() for name in CALLS}

    def start_envoy(self) -> None:
        config = self.workdir / "envoy.yaml"
        upstreams = envoy.Upstreams(
            tenant=[f"127.0.0.1:{self.grpc_ports['tenant']}"],
            chat=[f"127.0.0.1:{self.grpc_ports['chat']}"],
            calls=[f"127.0.0.1:{self.grpc_ports[name]}" for name in CALLS],
            bridge=[f"127.0.0.1:{port}" for port in self.bridge_ports.values()],
        )
        rendered = envoy.render(
            upstreams, listen_port=self.envoy_port, admin_port=self.envoy_admin_port
        )
        config.write_text(yaml.safe_dump(envoy_k8s.harden(yaml.safe_load(rendered))))
        self.procs["envoy"] = Proc("envoy", envoy.command(config), python_env({}), self.workdir)
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.envoy_admin_port}/ready"),
            "envoy",
            proc=self.procs["envoy"],
        )

    def start_calls(self, name: str) -> Proc:
        proc = self.start_grpc_service(
            name,
            "services.calls",
            METRICS_PORT=str(self.metrics_ports[name]),
            SHUTDOWN_GRACE_SECONDS=str(GRACE),
        )
        wait_until(lambda: self.envoy_sees_healthy(name), f"envoy health-checking {name}")
        return proc

    def envoy_sees_healthy(self, name: str) -> bool:
        host = f"127.0.0.1:{self.grpc_ports[name]}"
        return f"::{host}::health_flags::healthy" in self.envoy_clusters()

    def envoy_clusters(self) -> str:
        url = f"http://127.0.0.1:{self.envoy_admin_port}/clusters"
        with urllib.request.urlopen(url, timeout=2) as reply:
            return str(reply.read().decode())

    def requests_served(self, name: str) -> int:
        """Requests Envoy sent to one calls replica (its per-host counter)."""
        prefix = f"calls::127.0.0.1:{self.grpc_ports[name]}::rq_total::"
        for line in self.envoy_clusters().splitlines():
            if line.startswith(prefix):
                return int(line[len(prefix) :])
        return 0

    def start_all(self) -> None:
        self.start_postgres()
        self.start_nats()
        for name in ("tenant", "chat", *CALLS):
            self.grpc_ports[name] = free_port()
        self.start_envoy()
        self.start_grpc_service("tenant", "services.tenant")
        self.start_grpc_service("chat", "services.chat")
        for name in CALLS:
            self.start_calls(name)
        for name, port in self.bridge_ports.items():
            self.start_worker(
                name,
                "services.socket_bridge",
                ready=lambda port=port: http_ok(f"http://127.0.0.1:{port}/healthz"),
                HTTP_PORT=str(port),
            )
        for name in WEBHOOKS:
            self.start_grpc_service(name, "services.webhooks")


@pytest.fixture(scope="module")
def cluster() -> Iterator[ReplicaStack]:
    s = ReplicaStack()
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def replicas_back(cluster: ReplicaStack) -> Iterator[None]:
    """Whatever a test stops or kills is running again for the next one."""
    yield
    for name in CALLS:
        if not cluster.procs[name].alive():
            cluster.start_calls(name)


# --- helpers ---------------------------------------------------------------------------------


def sql(stack: Stack, query: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.database_url) as db:
        return list(db.execute(query, args).fetchall())


def execute(stack: Stack, statement: str, *args: object) -> None:
    with psycopg.connect(stack.database_url) as db:
        db.execute(statement, args)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def published(cluster: ReplicaStack, name: str) -> float:
    return metric(cluster.metrics_ports[name], "outbox_events_published_total")


def user(tenant: Tenant, user_id: str) -> httpx.AsyncClient:
    token = tenant.session_token(user_id)
    return httpx.AsyncClient(
        base_url=tenant.rest, headers={"Authorization": f"Bearer {token}"}, timeout=20
    )


async def devices(tenant: Tenant, *user_ids: str) -> dict[str, list[Device]]:
    """Two devices per user, connected one after the other: Envoy's round-robin puts a
    user's two sockets on different bridges."""
    out: dict[str, list[Device]] = {}
    for uid in user_ids:
        token = tenant.session_token(uid)
        out[uid] = [await Device(f"{uid}-{n}").connect(tenant.rest, token) for n in (1, 2)]
    return out


async def close_all(by_user: dict[str, list[Device]]) -> None:
    for devs in by_user.values():
        for d in devs:
            await d.close()


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def outbox_events(stack: Stack, tenant: Tenant) -> list[events_pb2.CallEvent]:
    rows = sql(
        stack,
        "SELECT payload FROM outbox WHERE subject LIKE %s ORDER BY seq",
        f"sendsar.{tenant.tenant_id}.calls.%",
    )
    return [events_pb2.CallEvent.FromString(bytes(r[0])) for r in rows]


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.05)


class Receiver:
    """A tenant's webhook endpoint: records every event id it is sent."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.ids.append(str((await request.json())["id"]))
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


# --- tests -----------------------------------------------------------------------------------


def test_migrations_are_safe_at_once_again_and_against_a_newer_schema(
    cluster: ReplicaStack,
) -> None:
    """What every Deployment's migrate init container runs, from several pods at once."""
    url_file = cluster.workdir / "database-url"
    url_file.write_text(cluster.database_url + "\n")
    command = [sys.executable, "-m", "alembic", "-x", "tolerate-newer=1", "upgrade", "head"]
    env = cluster.env()
    del env["DATABASE_URL"]
    env["DATABASE_URL_FILE"] = str(url_file)  # as mounted from the Secret
    runs = [subprocess.Popen(command, cwd=ROOT, env=env) for _ in range(3)]
    assert [r.wait(60) for r in runs] == [0, 0, 0]
    [(head,)] = sql(cluster, "SELECT version_num FROM alembic_version")

    # A rolled-back image meets the schema of a newer release: it starts, changing nothing.
    execute(cluster, "UPDATE alembic_version SET version_num = 'from_a_newer_release'")
    try:
        tolerant = subprocess.run(command, cwd=ROOT, env=env, capture_output=True)
        assert tolerant.returncode == 0, tolerant.stderr
        strict = subprocess.run(command[:3] + command[5:], cwd=ROOT, env=env, capture_output=True)
        assert strict.returncode != 0
        assert sql(cluster, "SELECT version_num FROM alembic_version") == [
            ("from_a_newer_release",)
        ]
    finally:
        execute(cluster, "UPDATE alembic_version SET version_num = %s", head)


async def test_direct_and_group_lifecycles_spread_across_replicas(
    cluster: ReplicaStack, receiver: Receiver
) -> None:
    tenant = create_tenant(cluster, "replicas")
    with tenant.api() as api:
        ok(api.put("/v1/tenant/webhook", json={"url": receiver.url}))
    direct = tenant.room("alice", "bob")
    group = tenant.room("alice", "bob", "carol")
    served_before = {name: cluster.requests_served(name) for name in CALLS}
    devs = await devices(tenant, "alice", "bob", "carol")
    alice, bob, carol = user(tenant, "alice"), user(tenant, "bob"), user(tenant, "carol")
    try:
        for port in cluster.bridge_ports.values():
            assert metric(port, "socket_bridge_connections") >= 1, "a bridge got no socket"

        # 1:1: ring on both of bob's devices, accept on one, the others hear it, hang up.
        call = ok(await alice.post(f"/chat/rooms/{direct}/calls", json={}))["call"]
        cid, base = call["id"], f"/chat/rooms/{direct}/calls/{call['id']}"
        assert call["status"] == "ringing"
        for d in devs["bob"]:
            await d.wait_for("call.invite", cid)
        assert ok(await bob.post(f"{base}/accept", json={}))["call"]["status"] == "active"
        for d in devs["alice"] + devs["bob"]:
            await d.wait_for("call.accepted", cid)
        ended = ok(await alice.post(f"{base}/end", json={}))["call"]
        assert (ended["status"], ended["endReason"]) == ("ended", "hangup")
        for d in devs["alice"] + devs["bob"]:
            await d.wait_for("call.ended", cid)
        assert all(not d.of("call.invite", cid) for d in devs["carol"])

        # Group: join by accept and by start, leave one by one; the last one out ends it.
        call = ok(await alice.post(f"/chat/rooms/{group}/calls", json={}))["call"]
        gid, base = call["id"], f"/chat/rooms/{group}/calls/{call['id']}"
        assert call["status"] == "active"
        for d in devs["bob"] + devs["carol"]:
            await d.wait_for("call.invite", gid)
        ok(await bob.post(f"{base}/accept", json={}))
        assert ok(await carol.post(f"/chat/rooms/{group}/calls", json={}))["call"]["id"] == gid
        for d in devs["alice"]:
            await d.wait_for("call.participant_joined", gid)
        for who in (bob, carol):
            assert ok(await who.post(f"{base}/leave", json={}))["call"]["status"] == "active"
        last = ok(await alice.post(f"{base}/leave", json={}))["call"]
        assert (last["status"], last["endReason"]) == ("ended", "all_left")
        for d in devs["alice"] + devs["bob"] + devs["carol"]:
            await d.wait_for("call.ended", gid)

        # Both calls replicas served this test's requests.
        for name in CALLS:
            assert cluster.requests_served(name) > served_before[name], name

        # Two dispatchers, one delivery of every event.
        expected = sorted(e.id for e in outbox_events(cluster, tenant))
        await until(lambda: len(receiver.ids) >= len(expected), 20, "webhook deliveries")
        await asyncio.sleep(1)  # a duplicate would arrive now
        assert sorted(receiver.ids) == expected
    finally:
        await close_all(devs)
        for client in (alice, bob, carol):
            await client.aclose()


async def test_sigterm_on_a_calls_replica_loses_no_request_and_no_ring_timeout(
    cluster: ReplicaStack, replicas_back: None
) -> None:
    tenant = create_tenant(cluster, "sigterm")
    tenant.patch_settings(ringTimeoutSeconds=RING)
    ring_rooms = [tenant.room(f"caller{i}", f"callee{i}") for i in range(6)]
    churn_rooms = [tenant.room(f"a{i}", f"b{i}") for i in range(4)]
    callers = [user(tenant, f"caller{i}") for i in range(6)]
    churners = [user(tenant, f"a{i}") for i in range(4)]
    replies: list[tuple[str, int, str]] = []
    accepted_starts: list[str] = []
    accepted_ends: list[str] = []
    done = asyncio.Event()

    async def churn(client: httpx.AsyncClient, room: str) -> None:
        """Starts and ends calls in one room until told to stop; records every reply."""
        while not done.is_set():
            reply = await client.post(f"/chat/rooms/{room}/calls", json={})
            replies.append(("start", reply.status_code, reply.text))
            if reply.status_code != 200:
                continue
            cid = reply.json()["call"]["id"]
            accepted_starts.append(cid)
            reply = await client.post(f"/chat/rooms/{room}/calls/{cid}/end", json={})
            replies.append(("end", reply.status_code, reply.text))
            if reply.status_code == 200:
                accepted_ends.append(cid)

    try:
        # Rings started on both replicas; one of them is about to go away.
        ringing: dict[str, float] = {}
        for client, room in zip(callers, ring_rooms, strict=True):
            call = ok(await client.post(f"/chat/rooms/{room}/calls", json={}))["call"]
            assert call["status"] == "ringing"
            ringing[call["id"]] = time.monotonic()
        workers = [
            asyncio.create_task(churn(c, r)) for c, r in zip(churners, churn_rooms, strict=True)
        ]
        await asyncio.sleep(1.0)
        before_stop = len(replies)
        stopping = time.monotonic()
        await asyncio.to_thread(cluster.procs["calls-1"].stop, 20)
        assert not cluster.procs["calls-1"].alive()
        assert time.monotonic() - stopping <= GRACE + 2, "calls-1 overran its grace period"
        await asyncio.sleep(2.0)
        done.set()
        await asyncio.gather(*workers)
        assert len(replies) > before_stop + 4, "the churn stalled after the SIGTERM"

        failed = [r for r in replies if r[1] != 200]
        assert not failed, failed[:5]
        rows = dict(
            sql(cluster, "SELECT id, status FROM calls WHERE id = ANY(%s)", accepted_starts)
        )
        assert set(rows) == set(accepted_starts)
        assert all(rows[cid] == "ended" for cid in accepted_ends)

        # Every ring, whichever replica started it, times out once, near its deadline.
        for cid, started in ringing.items():
            while True:
                [(status, reason)] = sql(
                    cluster, "SELECT status, end_reason FROM calls WHERE id = %s", cid
                )
                if status == "ended":
                    break
                assert time.monotonic() - started <= RING + SLACK, f"{cid} still {status}"
                await asyncio.sleep(0.1)
            assert reason == "timeout"
            missed = [e for e in outbox_events(cluster, tenant) if e.call.id == cid]
            assert [e.type for e in missed].count("call.missed") == 1
    finally:
        done.set()
        for client in callers + churners:
            await client.aclose()


async def test_sigkill_on_the_relay_publisher_keeps_events_flowing(
    cluster: ReplicaStack, replicas_back: None
) -> None:
    tenant = create_tenant(cluster, "sigkill")
    rooms = [tenant.room(f"caller{i}", "callee") for i in range(8)]
    callers = [user(tenant, f"caller{i}") for i in range(8)]
    [callee, callee_other] = (await devices(tenant, "callee"))["callee"]
    try:
        # The publisher of the latest event is the replica whose relay counter moved.
        counts = {name: published(cluster, name) for name in CALLS}
        first = ok(await callers[0].post(f"/chat/rooms/{rooms[0]}/calls", json={}))["call"]
        await callee.wait_for("call.invite", first["id"])
        moved = [name for name in CALLS if published(cluster, name) > counts[name]]
        assert len(moved) == 1, moved
        [leader] = moved
        survivor = next(name for name in CALLS if name != leader)

        # Kill it while more events are being committed, some possibly mid-batch.
        burst = [
            asyncio.create_task(c.post(f"/chat/rooms/{r}/calls", json={}))
            for c, r in zip(callers[1:4], rooms[1:4], strict=True)
        ]
        await asyncio.sleep(0.05)
        cluster.procs[leader].kill()
        killed_at = time.monotonic()
        after = [
            await c.post(f"/chat/rooms/{r}/calls", json={})
            for c, r in zip(callers[4:], rooms[4:], strict=True)
        ]
        # A start in flight on the killed process may have failed (503, never retried:
        # it may have committed); one sent after the kill is retried on the survivor.
        assert {(await t).status_code for t in burst} <= {200, 503}
        assert [r.status_code for r in after] == [200] * len(after)

        # Every call that exists, whether its start was answered or not, rings the callee.
        started = [
            cid
            for (cid,) in sql(
                cluster,
                "SELECT id FROM calls WHERE room_id = ANY(%s) AND id <> %s",
                rooms,
                first["id"],
            )
        ]
        assert len(started) >= len(after)
        for cid in started:
            await callee.wait_for("call.invite", cid, within=RELAY_BOUND)
        assert time.monotonic() - killed_at <= RELAY_BOUND
        [(unpublished,)] = sql(cluster, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert unpublished == 0
        assert published(cluster, survivor) > counts[survivor]
        # JetStream's de-duplication drops a batch the dead relay had already sent.
        for cid in [first["id"], *started]:
            assert len(callee.of("call.invite", cid)) == 1, cid
    finally:
        await callee.close()
        await callee_other.close()
        for client in callers:
            await client.aclose()
