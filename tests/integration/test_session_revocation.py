"""Revoking an API key ends the sessions it minted (issue 25, item 9): a session names
its minting key (claim `akid`), and every service's Authenticator refuses it once that key
is revoked, on every replica within a second or two (the revocation NOTIFY); its open
sockets are closed. Sessions minted before sessions named their key keep working."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt

from services.common.auth import mint_session
from services.common.settings import DEV_SESSION_KEY
from tests.conftest import Tenant, error_reason
from tests.integration.test_events_socketio import WAIT, open_socket
from tests.stack import Stack

SETTLE = 10.0  # the NOTIFY reaches every process well within this, even on a busy machine


def _new_key(tenant: Tenant) -> tuple[str, str]:
    with tenant.api() as api:
        reply = api.post("/v1/tenant/api-keys", json={})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["apiKey"]["id"]), str(reply.json()["key"])


def _session(tenant: Tenant, key: str, user_id: str) -> str:
    with httpx.Client(base_url=tenant.rest, timeout=20) as client:
        reply = client.post(
            "/v1/sessions", json={"userId": user_id}, headers={"Authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200, reply.text
        return str(reply.json()["token"])


def _revoke(tenant: Tenant, key_id: str) -> None:
    with tenant.api() as api:
        assert api.delete(f"/v1/tenant/api-keys/{key_id}").status_code == 200


def _statuses(tenant: Tenant, token: str, room: str) -> set[int]:
    """Requests to every service (tenant, chat, calls with its two workers)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=tenant.rest, headers=headers, timeout=20) as client:
        replies = [client.get("/v1/tenant/settings"), client.get(f"/chat/rooms/{room}/messages")]
        replies += [client.get(f"/chat/rooms/{room}/calls/active") for _ in range(4)]
    return {r.status_code for r in replies}


def test_a_session_names_the_key_that_minted_it(tenant: Tenant) -> None:
    key_id, key = _new_key(tenant)
    claims = jwt.decode(_session(tenant, key, "alice"), options={"verify_signature": False})
    assert claims["akid"] == key_id


def test_revoking_a_key_ends_its_sessions_and_no_others(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    key_id, key = _new_key(tenant)
    doomed = _session(tenant, key, "alice")
    kept = _session(tenant, tenant.api_key, "bob")
    assert _statuses(tenant, doomed, room) == {200}  # warm: the keys are cached now
    assert _statuses(tenant, kept, room) == {200}

    _revoke(tenant, key_id)
    deadline = time.monotonic() + SETTLE
    while _statuses(tenant, doomed, room) != {401}:
        assert time.monotonic() < deadline, "a session of a revoked key still works"
        time.sleep(0.2)
    with httpx.Client(base_url=tenant.rest, timeout=20) as client:
        reply = client.get("/v1/tenant/settings", headers={"Authorization": f"Bearer {doomed}"})
    assert error_reason(reply) == "UNAUTHENTICATED"
    assert "revoked" in reply.json()["message"]
    assert _statuses(tenant, kept, room) == {200}  # the other key's sessions carry on


def test_sessions_minted_before_sessions_named_their_key_keep_working(tenant: Tenant) -> None:
    """What an older deployment minted: no `akid` claim. Such a session is not tied to a
    key and lives until it expires (at most SESSION_MAX_TTL_SECONDS)."""
    room = tenant.room("alice", "bob")
    old_style, _ = mint_session(
        signing_key=DEV_SESSION_KEY,
        tenant_id=tenant.tenant_id,
        user_id="alice",
        name=None,
        ttl_seconds=600,
    )
    assert "akid" not in jwt.decode(old_style, options={"verify_signature": False})
    key_id, _ = _new_key(tenant)
    _revoke(tenant, key_id)
    assert _statuses(tenant, old_style, room) == {200}


async def test_a_revoked_keys_sockets_are_closed_and_refused(stack: Stack, tenant: Tenant) -> None:
    key_id, key = _new_key(tenant)
    token = await asyncio.to_thread(_session, tenant, key, "alice")
    other = await asyncio.to_thread(_session, tenant, tenant.api_key, "alice")
    doomed = await open_socket(stack.rest, token, "doomed")
    kept = await open_socket(stack.rest, other, "kept")
    try:
        await doomed.until(lambda: bool(doomed.syncs), "call.sync")
        await asyncio.to_thread(_revoke, tenant, key_id)
        await doomed.until(lambda: "disconnect" in doomed.timeline, "the close", within=WAIT)
        assert doomed.closing[0]["reason"] == "SESSION_REVOKED", doomed.closing
        assert kept.sio.connected and not kept.closing
        again = await open_socket(stack.rest, token, "again")
        assert not again.sio.connected
        assert again.refusals[0]["data"]["reason"] == "UNAUTHENTICATED", again.refusals
    finally:
        for device in (doomed, kept):
            if device.sio.connected:
                await device.sio.disconnect()
