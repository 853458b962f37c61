"""NATS users as production configures them: a real nats-server runs the accounts and
permissions of deploy/k8s/overlays/prod/nats-values.yaml (`config.merge`, rendered as the
official chart renders it), each service connects as its own nkey user and does its job
with the code it runs, and what a service must never do is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sendsar.calls.v1 import events_pb2

from devstack.procs import ROOT, Proc, free_port, port_open, python_env, wait_until
from services.common.settings import Settings, load_settings
from services.events import relay, types
from services.events.consumer import EventConsumer
from services.events.jetstream import connect, ensure_stream, inbox_prefix
from services.events.publish import Message, Publisher, Result
from services.socket_bridge.app import Bridge
from services.webhooks.intake import Intake

VALUES = ROOT / "deploy/k8s/overlays/prod/nats-values.yaml"
DB = "postgresql://unused@127.0.0.1:1/unused"  # settings need one; never connected here
# The connection names the services use (their reply subjects start with these).
RELAY, BRIDGE, WEBHOOKS = "outbox-relay", "socket-bridge", "webhooks"
# The environment variables nats-values.yaml takes each user's public key from.
USERS = {
    RELAY: "SENDSAR_RELAY_NKEY",
    BRIDGE: "SENDSAR_BRIDGE_NKEY",
    WEBHOOKS: "SENDSAR_WEBHOOKS_NKEY",
}
EVENTS = 3000  # enough for JetStream to ask the bridge's consumer for flow control


def test_the_users_are_named_as_the_services_connect() -> None:
    """The permissions name each service's reply subjects after its connection's name."""
    settings = load_settings(ENV="test", DATABASE_URL=DB)
    assert relay.CONNECTION_NAME == RELAY
    assert Intake(settings, on_queued=lambda: None).consumer.name == WEBHOOKS
    assert Bridge(settings).consumer.name == BRIDGE
    text = VALUES.read_text()
    for name in (RELAY, BRIDGE, WEBHOOKS):
        assert f"- {inbox_prefix(name)}.>" in text


def render(merge: dict[str, Any]) -> str:
    """`config.merge` as the chart writes it into nats.conf: JSON, with `<< x >>` strings
    unquoted (NATS variables, here the environment's public keys)."""
    return re.sub(r'"<< (.+?) >>"', r"\1", json.dumps(merge, indent=2))


@dataclass
class Server:
    url: str
    seeds: dict[str, Path]  # connection name -> its nkey seed file
    log: Path

    def settings(self, name: str, **extra: str) -> Settings:
        seed = str(self.seeds[name])
        return load_settings(
            ENV="test", DATABASE_URL=DB, NATS_URL=self.url, NATS_NKEY_SEED_FILE=seed, **extra
        )

    def violations(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "Violation" in line]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("nats-permissions")
    values = yaml.safe_load(VALUES.read_text())
    env, seeds = {}, {}
    for name, variable in USERS.items():
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        seeds[name] = workdir / f"{name}.nk"
        seeds[name].write_bytes(seed)
        env[variable] = nkeys.from_seed(seed).public_key.decode()
    port = free_port()
    config = workdir / "nats.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{workdir / "js"}" }}\n'
        f"{render(values['config']['merge'])[1:-1]}\n"
    )
    proc = Proc(
        "nats",
        [str(Path(sys.executable).parent / "nats-server"), "-c", str(config)],
        python_env(env),
        workdir,
    )
    wait_until(lambda: port_open(port), "nats-server", proc=proc)
    yield Server(f"nats://127.0.0.1:{port}", seeds, proc.log)
    proc.stop()


def event(i: int) -> tuple[str, bytes]:
    """A call event of tenant ten_perm on its subject."""
    occurred = Timestamp()
    occurred.GetCurrentTime()
    pb = events_pb2.CallEvent(
        id=f"evt_perm{i}", type=types.INVITE, tenant_id="ten_perm", occurred_at=occurred
    )
    pb.call.id = f"call_perm{i}"
    pb.recipient_user_ids.extend(["u" * 40] * 10)  # about 500 bytes: flow control kicks in
    return types.subject("ten_perm", types.INVITE), pb.SerializeToString()


@pytest.fixture(scope="module")
async def published(server: Server) -> AsyncIterator[int]:
    """The relay's user creates the stream, updates it (a start with changed limits), reads
    it (the relay's probe after a failed publish) and publishes EVENTS events through the
    relay's publisher."""
    settings = server.settings(RELAY)
    nc = await connect(settings, RELAY)
    try:
        await ensure_stream(nc, server.settings(RELAY, NATS_STREAM_MAX_AGE_SECONDS="3600"))
        await ensure_stream(nc, settings)
        info = await nc.jetstream().stream_info(types.STREAM)
        assert info.config.max_age == settings.NATS_STREAM_MAX_AGE_SECONDS
        publisher = Publisher(nc)
        for start in range(0, EVENTS, 500):
            batch = [Message(f"row{i}", *event(i)) for i in range(start, start + 500)]
            outcomes = await publisher.publish(batch, ack_wait=10)
            assert {o.result for o in outcomes} == {Result.PUBLISHED}, outcomes[0]
        yield EVENTS
    finally:
        await nc.close()


async def _consume(server: Server, name: str, durable: str | None, expected: int) -> set[str]:
    """The ids the service's consumer (the code it runs) handled, once it had `expected`."""
    seen: set[str] = set()
    done = asyncio.Event()

    async def handle(batch: list[events_pb2.CallEvent], _: list[str | None]) -> None:
        seen.update(e.id for e in batch)
        if len(seen) >= expected:
            done.set()

    consumer = EventConsumer(server.settings(name), name, handle, durable=durable)
    task = asyncio.create_task(consumer.run())
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
        # Acks, flow-control answers and heartbeats go on while the consumer runs.
        await asyncio.sleep(2.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.close()
    return seen


async def test_each_service_does_its_job_with_its_own_user(server: Server, published: int) -> None:
    from_start = {f"evt_perm{i}" for i in range(EVENTS)}
    # The webhook intake's durable consumer reads (and acknowledges) everything.
    assert await _consume(server, WEBHOOKS, "webhooks", EVENTS) == from_start
    # The bridge follows new events: published once its consumer is there.
    bridge = asyncio.create_task(_consume(server, BRIDGE, None, EVENTS))
    await asyncio.sleep(2)
    settings = server.settings(RELAY)
    nc = await connect(settings, RELAY)
    try:
        publisher = Publisher(nc)
        for start in range(EVENTS, 2 * EVENTS, 500):
            batch = [Message(f"more{i}", *event(i)) for i in range(start, start + 500)]
            outcomes = await publisher.publish(batch, ack_wait=10)
            assert {o.result for o in outcomes} == {Result.PUBLISHED}
    finally:
        await nc.close()
    assert await bridge == {f"evt_perm{i}" for i in range(EVENTS, 2 * EVENTS)}
    assert server.violations() == []


async def _raw(server: Server, name: str, errors: list[str]) -> NATS:
    """A plain connection as that service's user, recording what the server refuses."""

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return await nats.connect(
        server.url,
        nkeys_seed=str(server.seeds[name]),
        inbox_prefix=inbox_prefix(name),
        error_cb=on_error,
        allow_reconnect=False,
    )


async def _stream_last_seq(server: Server) -> int:
    nc = await connect(server.settings(RELAY), RELAY)
    try:
        return int((await nc.jetstream().stream_info(types.STREAM)).state.last_seq)
    finally:
        await nc.close()


async def _refused(errors: list[str], operation: str, subject: str) -> None:
    """Waits for the server's refusal (it comes as an asynchronous -ERR)."""
    refusal = f'permissions violation for {operation} to "{subject.lower()}"'
    for _ in range(100):
        if any(refusal in e for e in errors):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no refusal of {operation} to {subject}: {errors}")


async def test_the_readers_cannot_publish_events_or_touch_the_stream(
    server: Server, published: int
) -> None:
    before = await _stream_last_seq(server)
    for name in (BRIDGE, WEBHOOKS):
        errors: list[str] = []
        nc = await _raw(server, name, errors)
        try:
            subject, payload = event(0)
            await nc.publish(subject, payload)  # what would become a socket event or webhook
            await _refused(errors, "publish", subject)
            with pytest.raises(Exception):  # noqa: B017 - refused: no reply at all
                await nc.jetstream(timeout=1).purge_stream(types.STREAM)
            await _refused(errors, "publish", f"$JS.API.STREAM.PURGE.{types.STREAM}")
            with pytest.raises(Exception):  # noqa: B017
                await nc.jetstream(timeout=1).delete_consumer(types.STREAM, "webhooks")
            await _refused(errors, "publish", f"$JS.API.CONSUMER.DELETE.{types.STREAM}.webhooks")
        finally:
            await nc.close()
    assert await _stream_last_seq(server) == before


async def test_the_relay_cannot_read_events(server: Server, published: int) -> None:
    errors: list[str] = []
    nc = await _raw(server, RELAY, errors)
    try:
        got: list[Msg] = []

        async def take(msg: Msg) -> None:
            got.append(msg)

        await nc.subscribe("sendsar.>", cb=take)
        await _refused(errors, "subscription", "sendsar.>")
        # Nor another service's deliveries, nor a consumer of its own.
        await nc.subscribe(f"{inbox_prefix(BRIDGE)}.>")
        await _refused(errors, "subscription", f"{inbox_prefix(BRIDGE)}.>")
        with pytest.raises(Exception):  # noqa: B017
            await nc.jetstream(timeout=1).pull_subscribe(
                types.SUBJECTS, durable="spy", stream=types.STREAM
            )
        await nc.publish(*event(1))  # allowed: it is the publisher
        await nc.flush()
        await asyncio.sleep(0.5)
        assert got == []
    finally:
        await nc.close()


async def test_a_connection_without_credentials_is_refused(server: Server) -> None:
    with pytest.raises(Exception):  # noqa: B017 - nats-py's error type varies by version
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
