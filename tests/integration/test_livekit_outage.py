"""LiveKit unreachable: calls still end at once in our database; room clean-up is retried."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.conftest import Tenant
from tests.integration.test_livekit_media import participant_joined, post_webhook, signed_webhook
from tests.stack import Stack

pytestmark = [pytest.mark.livekit, pytest.mark.slow]


def cleanup_pending(stack: Stack, call_id: str) -> bool:
    with psycopg.connect(stack.database_url) as db:
        row = db.execute(
            "SELECT livekit_cleanup_pending FROM calls WHERE id = %s", (call_id,)
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_end_while_livekit_is_down_is_retried_until_livekit_confirms(
    stack: Stack, tenant: Tenant
) -> None:
    if not stack.livekit_enabled:
        pytest.skip("livekit-server not built (make livekit)")
    room = tenant.room("alice", "bob")
    alice, bob = tenant.user("alice"), tenant.user("bob")
    call_id = alice.post(f"/chat/rooms/{room}/calls", json={}).json()["call"]["id"]
    assert bob.post(f"/chat/rooms/{room}/calls/{call_id}/accept").status_code == 200
    # LiveKit reports bob in the media room: only such a call has a room to delete.
    body, jwt = signed_webhook(participant_joined(call_id, "bob"))
    assert post_webhook(stack, body, jwt).status_code == 200

    stack.procs["livekit"].stop()
    try:
        ended = alice.post(f"/chat/rooms/{room}/calls/{call_id}/end")
        assert ended.status_code == 200 and ended.json()["call"]["status"] == "ended"
        assert alice.get(f"/chat/rooms/{room}/calls/active").json() == {}
        time.sleep(2)  # the immediate attempt has failed by now
        assert cleanup_pending(stack, call_id)
    finally:
        stack.start_livekit()
    deadline = time.monotonic() + 30
    while cleanup_pending(stack, call_id):
        assert time.monotonic() < deadline, "the clean-up was not retried once LiveKit came back"
        time.sleep(0.5)
