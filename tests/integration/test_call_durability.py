"""Ring timeouts survive the process that started the call, and fire once across replicas."""

from __future__ import annotations

import time

import grpc
import psycopg
import pytest
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc

from tests.conftest import Tenant
from tests.integration.calls_api import history, wait_ended
from tests.stack import Stack

pytestmark = pytest.mark.slow


def start_via(address: str, token: str, room: str) -> pb.Call:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.CallServiceStub(channel).StartCall(
            pb.StartCallRequest(room_id=room),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=10,
        )
    return reply.call


def test_ring_timeout_fires_after_the_starting_process_is_killed(
    stack: Stack, tenant: Tenant
) -> None:
    tenant.patch_settings(ringTimeoutSeconds=5)
    room = tenant.room("alice", "bob")
    replica = stack.start_grpc_service("calls-doomed", "services.calls")
    try:
        started = time.monotonic()
        call = start_via(
            f"127.0.0.1:{stack.grpc_ports['calls-doomed']}", tenant.session_token("alice"), room
        )
        replica.kill()  # SIGKILL: no clean-up, no goodbye
    finally:
        replica.kill()
    ended = wait_ended(tenant.user("bob"), room, within=10)
    assert 4.0 <= ended - started <= 6.5
    [record] = history(tenant.user("bob"), room)
    assert (record["callId"], record["outcome"], record["endReason"]) == (
        call.id,
        "missed",
        "timeout",
    )


def test_two_replicas_expire_a_ring_exactly_once(stack: Stack, tenant: Tenant) -> None:
    tenant.patch_settings(ringTimeoutSeconds=5)
    replica = stack.start_grpc_service("calls-b", "services.calls")
    try:
        rooms = [tenant.room("alice", f"bob{i}") for i in range(10)]
        token = tenant.session_token("alice")
        ids = [
            start_via(
                f"127.0.0.1:{stack.grpc_ports['calls-b' if i % 2 else 'calls']}", token, room
            ).id
            for i, room in enumerate(rooms)
        ]
        for room in rooms:
            wait_ended(tenant.user("alice"), room, within=12)
        time.sleep(1)  # a second expiry would have happened by now
    finally:
        replica.stop()
    for room, call_id in zip(rooms, ids, strict=True):
        records = history(tenant.user("alice"), room)
        assert [(r["callId"], r["outcome"]) for r in records] == [(call_id, "missed")]
    with psycopg.connect(stack.database_url) as db:
        row = db.execute(
            "SELECT count(*) FROM outbox WHERE subject = %s",
            (f"sendsar.{tenant.tenant_id}.calls.missed",),
        ).fetchone()
    assert row is not None and row[0] == len(rooms)  # one call.missed event per call
