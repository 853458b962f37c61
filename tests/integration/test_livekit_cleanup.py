"""LiveKit room clean-up against a real LiveKit server and real rtc clients: only a call
whose media room LiveKit told us of has its room deleted at the end (no DeleteRoom, no
clean-up transaction for the others), and a room that shows up after its call ended
(a media token used late) is deleted, through its webhook or, when that is lost,
through reconciliation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from livekit import api

from devstack.procs import http_ok
from services.common.settings import DEV_LIVEKIT_SECRET
from tests.conftest import Tenant, create_tenant
from tests.integration.test_livekit_media import (
    Media,
    _needs_livekit,  # noqa: F401  (autouse)
    act,
    direct_call,
    eventually,
    room_names,
    start,
)
from tests.stack import Stack, new_workdir

pytestmark = [pytest.mark.livekit]


def flags(stack: Stack, call_id: str) -> tuple[bool, bool]:
    """(media_used, livekit_cleanup_pending) of a call."""
    with psycopg.connect(stack.database_url) as db:
        row = db.execute(
            "SELECT media_used, livekit_cleanup_pending FROM calls WHERE id = %s", (call_id,)
        ).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


async def room_gone(stack: Stack, livekit_room: str) -> bool:
    url = stack.env()["LIVEKIT_URL"]
    async with api.LiveKitAPI(url, "devkey", DEV_LIVEKIT_SECRET) as lk:
        return livekit_room not in await room_names(lk)


async def join_late(m: Media, livekit: dict[str, Any]) -> None:
    """Connects with a token of a call that has ended, and waits until the client is out.
    The room may be deleted while the client still sets up its connection (then the
    connect fails rather than disconnects); the caller checks the join reached LiveKit."""
    with contextlib.suppress(Exception):
        await m.connect(livekit)
    await eventually(lambda: not m.connected(), f"{m.name}'s late join to be undone")


def ended_without_media(tenant: Tenant) -> tuple[str, dict[str, Any]]:
    """A 1:1 call answered and hung up with nobody in its media room: its id, and the
    callee's media credentials (still valid: the token outlives the call)."""
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = start(alice, room, type="audio")["call"]["id"]
    accepted = act(bob, room, call_id, "accept")
    assert act(alice, room, call_id, "end")["call"]["status"] == "ended"
    return call_id, accepted["livekit"]


# --- webhooks delivered (the session's stack) --------------------------------------------------


async def test_a_call_whose_media_was_joined_still_has_its_room_deleted_at_the_end(
    stack: Stack,
    tenant: Tenant,
    media: Callable[[str], Media],
) -> None:
    room, call_id, alice, _bob, ma, mb = await direct_call(tenant, media)
    await eventually(lambda: flags(stack, call_id)[0], "participant_joined to mark the room")

    act(alice, room, call_id, "end")

    await asyncio.gather(ma.wait_disconnected(), mb.wait_disconnected())
    await eventually(lambda: room_gone(stack, call_id), "the LiveKit room to be deleted")
    await eventually(lambda: flags(stack, call_id) == (True, False), "the clean-up marked done")


async def test_a_caller_in_the_media_room_of_a_cancelled_call_is_disconnected(
    stack: Stack,
    tenant: Tenant,
    media: Callable[[str], Media],
) -> None:
    room = tenant.room("alice", "bob")
    alice = tenant.user("alice")
    started = start(alice, room, type="audio")
    call_id = started["call"]["id"]
    ma = await media("alice").connect(started["livekit"])  # while it rings
    await eventually(lambda: flags(stack, call_id)[0], "participant_joined to mark the room")

    assert act(alice, room, call_id, "end")["call"]["endReason"] == "cancelled"

    await ma.wait_disconnected()
    await eventually(lambda: room_gone(stack, call_id), "the LiveKit room to be deleted")


async def test_a_call_ended_before_anyone_joined_media_leaves_no_clean_up(
    stack: Stack, tenant: Tenant
) -> None:
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    cancelled = start(alice, room)["call"]["id"]
    act(alice, room, cancelled, "end")
    declined = start(alice, room)["call"]["id"]
    act(bob, room, declined, "decline")
    hung_up, _ = ended_without_media(tenant)

    await asyncio.sleep(1)  # what an end queues is done within milliseconds
    for call_id in (cancelled, declined, hung_up):
        assert flags(stack, call_id) == (False, False), call_id


async def test_joining_the_media_room_after_the_end_gets_the_room_deleted_via_its_webhook(
    stack: Stack,
    tenant: Tenant,
    media: Callable[[str], Media],
) -> None:
    call_id, bob_livekit = ended_without_media(tenant)
    assert flags(stack, call_id) == (False, False)

    await join_late(media("bob"), bob_livekit)

    # Only participant_joined marks the ended call: reconciliation deletes rooms without
    # touching the row.
    await eventually(lambda: flags(stack, call_id)[0], "the late join's webhook to arrive")
    await eventually(lambda: room_gone(stack, call_id), "the LiveKit room to be deleted")
    await eventually(lambda: flags(stack, call_id) == (True, False), "the clean-up marked done")


# --- webhooks lost: a stack of our own whose calls workers serve their metrics ----------------


@dataclass
class DeafStack(Stack):
    """LiveKit sends its webhooks nowhere and reconciliation runs every second."""

    def deletions(self, why: str) -> float:
        """DeleteRoom requests the calls workers sent, for one reason, all workers summed."""
        line = f'livekit_room_deletions_total{{why="{why}"}} '
        total = 0.0
        for i in range(self.workers["calls"]):
            url = f"http://127.0.0.1:{self.metrics_ports['calls'] + i}/metrics"
            text = httpx.get(url, timeout=5).text
            total += sum(float(s.split()[-1]) for s in text.splitlines() if s.startswith(line))
        return total


@pytest.fixture(scope="module")
def deaf_stack() -> Iterator[DeafStack]:
    s = DeafStack(
        workdir=new_workdir(),
        settings={"CALL_RECONCILE_SECONDS": "1"},
        livekit_webhook_url="http://127.0.0.1:9/livekit/webhook",  # discard port: nothing
    )
    try:
        s.start_all()
        assert http_ok(f"http://127.0.0.1:{s.metrics_ports['calls']}/metrics")
        yield s
    finally:
        s.stop_all()


async def test_calls_that_end_without_media_send_no_delete_room(deaf_stack: DeafStack) -> None:
    tenant = create_tenant(deaf_stack, "deaf")
    before = deaf_stack.deletions("ended")
    ended = [ended_without_media(tenant)[0] for _ in range(3)]
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    for verb, who in (("end", alice), ("decline", bob)):
        call_id = start(alice, room)["call"]["id"]
        act(who, room, call_id, verb)
        ended.append(call_id)

    await asyncio.sleep(2)  # the old rule sent each DeleteRoom within milliseconds
    assert deaf_stack.deletions("ended") == before
    for call_id in ended:
        assert flags(deaf_stack, call_id) == (False, False), call_id


async def test_with_webhooks_lost_reconciliation_marks_a_joined_room_for_the_end(
    deaf_stack: DeafStack,
    media: Callable[[str], Media],
) -> None:
    tenant = create_tenant(deaf_stack, "deaf")
    before = deaf_stack.deletions("ended")
    room, call_id, alice, _bob, ma, mb = await direct_call(tenant, media)
    await eventually(lambda: flags(deaf_stack, call_id)[0], "reconciliation to see the room")

    act(alice, room, call_id, "end")

    await asyncio.gather(ma.wait_disconnected(), mb.wait_disconnected())
    await eventually(lambda: room_gone(deaf_stack, call_id), "the LiveKit room to be deleted")
    assert deaf_stack.deletions("ended") > before


async def test_with_webhooks_lost_a_late_join_is_removed_by_reconciliation(
    deaf_stack: DeafStack,
    media: Callable[[str], Media],
) -> None:
    tenant = create_tenant(deaf_stack, "deaf")
    call_id, bob_livekit = ended_without_media(tenant)
    before = deaf_stack.deletions("stale")

    await join_late(media("bob"), bob_livekit)  # no webhook tells the calls service

    await eventually(lambda: room_gone(deaf_stack, call_id), "the LiveKit room to be deleted")
    assert deaf_stack.deletions("stale") > before
    # Nothing but reconciliation saw the room: the call's row is as the end left it.
    assert flags(deaf_stack, call_id) == (False, False)
