"""API key lifecycle over REST: create (shown once), list (last used), revoke (within a
second on every replica, the last key kept, atomically)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from tests.conftest import Tenant, error_reason
from tests.integration.fronts import Front, front
from tests.stack import Stack

KEYS = "/v1/tenant/api-keys"


def _as(rest: str, credential: str) -> httpx.Client:
    return httpx.Client(
        base_url=rest, headers={"Authorization": f"Bearer {credential}"}, timeout=20
    )


def _create(tenant: Tenant) -> dict[str, object]:
    with tenant.api() as api:
        reply = api.post(KEYS, json={})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _listed(tenant: Tenant) -> list[dict[str, object]]:
    with tenant.api() as api:
        reply = api.get(KEYS)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["apiKeys"])


@pytest.fixture(scope="module")
def replica(stack: Stack) -> Iterator[Front]:
    """A second tenant and chat replica, with caches of their own."""
    with front(stack, "replica", ("tenant", "chat")) as f:
        yield f


def test_a_new_key_is_shown_once_and_works(stack: Stack, tenant: Tenant) -> None:
    created = _create(tenant)
    key, info = str(created["key"]), dict(created["apiKey"])  # type: ignore[call-overload]
    assert key.startswith(str(info["prefix"])) and info["prefix"] == f"sk_{info['id']}_"
    assert datetime.fromisoformat(str(info["createdAt"])) <= datetime.now(UTC)
    with _as(tenant.rest, key) as api:
        assert api.get("/v1/tenant/settings").status_code == 200
    listed = _listed(tenant)
    assert [k["id"] for k in listed][-1] == info["id"]
    assert key not in str(listed) and key.rsplit("_", 1)[1] not in str(listed)
    with psycopg.connect(stack.database_url) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys WHERE id = %s", (info["id"],))
        assert key.rsplit("_", 1)[1] not in str(stored.fetchone())


def test_list_shows_when_each_key_was_last_used(tenant: Tenant) -> None:
    fresh = _create(tenant)
    listed = {k["id"]: k for k in _listed(tenant)}
    # The bootstrap key has just been used (by the list call itself); the new one never.
    fresh_id = dict(fresh["apiKey"])["id"]  # type: ignore[call-overload]
    assert "lastUsedAt" not in listed[fresh_id] or listed[fresh_id]["lastUsedAt"] is None
    (used,) = [k for i, k in listed.items() if i != fresh_id]
    seconds = (datetime.now(UTC) - datetime.fromisoformat(str(used["lastUsedAt"]))).total_seconds()
    assert -5 < seconds < 60


def _wait_refused(rest: str, key: str, path: str) -> float:
    """Seconds until `key` gets 401 at `path` (at most 3)."""
    started = time.monotonic()
    with _as(rest, key) as client:
        while time.monotonic() - started < 3:
            reply = client.get(path)
            if reply.status_code == 401:
                assert error_reason(reply) == "UNAUTHENTICATED"
                return time.monotonic() - started
            time.sleep(0.05)
    return float("inf")


def test_a_revoked_key_is_refused_within_a_second_on_every_replica(
    stack: Stack, tenant: Tenant, replica: Front
) -> None:
    doomed = _create(tenant)
    key, key_id = str(doomed["key"]), dict(doomed["apiKey"])["id"]  # type: ignore[call-overload]
    room = tenant.room("alice", "bob")
    messages = f"/chat/rooms/{room}/messages"
    # Every replica has verified (and cached) the key.
    for rest in (stack.rest, replica.rest):
        with _as(rest, key) as client:
            assert client.get("/v1/tenant/settings").status_code == 200
            assert client.get(messages).status_code == 200
    with tenant.api() as api:
        assert api.delete(f"{KEYS}/{key_id}").status_code == 200
    for rest in (stack.rest, replica.rest):
        assert _wait_refused(rest, key, "/v1/tenant/settings") < 1.0
        assert _wait_refused(rest, key, messages) < 1.0
    assert key_id not in [k["id"] for k in _listed(tenant)]
    with tenant.api() as api:  # already revoked
        assert error_reason(api.delete(f"{KEYS}/{key_id}")) == "API_KEY_NOT_FOUND"


def test_the_last_key_cannot_be_revoked(tenant: Tenant) -> None:
    (only,) = _listed(tenant)
    with tenant.api() as api:
        reply = api.delete(f"{KEYS}/{only['id']}")
        assert reply.status_code == 409, reply.text
        assert error_reason(reply) == "LAST_API_KEY"
        assert api.get("/v1/tenant/settings").status_code == 200


def _revoke(rest: str, item: tuple[str, object]) -> int:
    """DELETE of key id item[1] with key item[0]."""
    with _as(rest, item[0]) as client:
        return client.delete(f"{KEYS}/{item[1]}").status_code


def _works(rest: str, key: str) -> bool:
    with _as(rest, key) as client:
        return client.get("/v1/tenant/settings").status_code == 200


def test_concurrent_revocations_of_the_last_two_keys_keep_one(
    new_tenant: Callable[..., Tenant],
) -> None:
    for _ in range(5):
        tenant = new_tenant()
        second = _create(tenant)
        keys = {  # each key revokes itself, both at once
            str(second["key"]): dict(second["apiKey"])["id"],  # type: ignore[call-overload]
            tenant.api_key: _listed(tenant)[0]["id"],
        }
        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(_revoke, [tenant.rest] * 2, keys.items()))
        assert statuses == [200, 409]
        survivors = [k for k in keys if _works(tenant.rest, k)]
        assert len(survivors) == 1


def test_keys_are_the_tenants_own(new_tenant: Callable[..., Tenant]) -> None:
    mine, theirs = new_tenant(), new_tenant()
    extra = _create(theirs)
    extra_id = dict(extra["apiKey"])["id"]  # type: ignore[call-overload]
    with mine.api() as api:
        assert error_reason(api.delete(f"{KEYS}/{extra_id}")) == "API_KEY_NOT_FOUND"
    assert extra_id not in [k["id"] for k in _listed(mine)]
    assert extra_id in [k["id"] for k in _listed(theirs)]


def test_bad_ids_and_sessions_are_refused(tenant: Tenant) -> None:
    with tenant.api() as api:
        reply = api.delete(f"{KEYS}/not-a-key")
        assert reply.status_code == 400 and error_reason(reply) == "INVALID_ARGUMENT"
        assert api.delete(f"{KEYS}/{'0' * 16}").status_code == 404
    with tenant.user("alice") as user:
        for reply in (user.get(KEYS), user.post(KEYS, json={}), user.delete(f"{KEYS}/{'0' * 16}")):
            assert reply.status_code == 403 and error_reason(reply) == "API_KEY_REQUIRED"


def test_a_tenant_holds_at_most_twenty_keys(tenant: Tenant) -> None:
    for _ in range(19):
        _create(tenant)
    with tenant.api() as api:
        reply = api.post(KEYS, json={})
    assert reply.status_code == 409 and error_reason(reply) == "TOO_MANY_API_KEYS"
    assert len(_listed(tenant)) == 20
