"""A fair front door (issue 25, item 5): Envoy's rate limit before authentication is one
token bucket per client address, so an unauthenticated flood from one address spends
that address's budget alone and a tenant calling from another address is unaffected.
The address is the connection's peer: a forged X-Forwarded-For buys no fresh bucket.

On loopback every 127.0.0.0/8 address reaches Envoy's 127.0.0.1 listener, and Envoy sees
the address the client bound (127.0.0.2 for the flood, 127.0.0.3 for the tenant)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Tenant, error_reason
from tests.integration.fronts import Front, front
from tests.stack import Stack

PER_SECOND = 5  # per address; the bucket holds twice that


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[Front]:
    """An Envoy of its own with a small per-address budget, before the stack's services."""
    with front(stack, "fair", (), envoy_options={"rate_limit_per_second": PER_SECOND}) as f:
        yield f


def _client(front: Front, address: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=front.rest,
        transport=httpx.HTTPTransport(local_address=address),
        headers=headers,
        timeout=20,
    )


def test_an_unauthenticated_flood_from_one_address_leaves_another_tenant_alone(
    limited: Front, tenant: Tenant
) -> None:
    flood_statuses: Counter[int] = Counter()
    flooding = threading.Event()
    stop = threading.Event()

    def flood() -> None:
        with _client(limited, "127.0.0.2") as attacker:
            while not stop.is_set():
                for path in ("/v1/tenant/settings", "/v1/sessions", "/chat/calls/ringing"):
                    flood_statuses[attacker.get(path).status_code] += 1
                flooding.set()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        assert flooding.wait(20)
        with _client(limited, "127.0.0.3", Authorization=f"Bearer {tenant.api_key}") as calm:
            # Within this address's own budget, while the flood goes on.
            statuses = [calm.get("/v1/tenant/settings").status_code for _ in range(PER_SECOND)]
        assert statuses == [200] * PER_SECOND
    finally:
        stop.set()
        thread.join(20)
    assert flood_statuses[429] > flood_statuses[401], flood_statuses  # the flood was limited


def test_the_limit_answers_429_with_its_scope_and_ignores_forwarded_for(limited: Front) -> None:
    with _client(limited, "127.0.0.4") as client:
        replies = [
            client.get("/v1/tenant/settings", headers={"X-Forwarded-For": f"10.1.2.{i}"})
            for i in range(3 * PER_SECOND)
        ]
    limited_replies = [r for r in replies if r.status_code == 429]
    assert len(limited_replies) >= PER_SECOND - 1, [r.status_code for r in replies]
    reply = limited_replies[-1]
    assert error_reason(reply) == "RATE_LIMITED"
    info = reply.json()["details"][0]
    assert info["metadata"] == {"scope": "address"}
