"""Fair limits through Envoy: one tenant's (or one credential's) flood gets 429
RATE_LIMITED while other tenants, and LiveKit's webhooks, keep their own budgets.

The replicas here run with tiny buckets that barely refill during a test (1 token a
second), so the counts below are exact up to a token or two of refill."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from livekit.protocol import models
from livekit.protocol import webhook as lk_webhook

from tests.conftest import Tenant, error_reason
from tests.integration.fronts import Front, front
from tests.integration.test_livekit_media import signed_webhook
from tests.stack import Stack

CREDENTIAL_BURST = 6
TENANT_BURST = 15
LIVEKIT_BURST = 4


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[Front]:
    with front(
        stack,
        "limited",
        ("tenant", "calls"),
        RATE_LIMIT_CREDENTIAL_PER_SECOND="0.2",
        RATE_LIMIT_CREDENTIAL_BURST=str(CREDENTIAL_BURST),
        RATE_LIMIT_TENANT_PER_SECOND="0.2",
        RATE_LIMIT_TENANT_BURST=str(TENANT_BURST),
        RATE_LIMIT_LIVEKIT_PER_SECOND="0.2",
        RATE_LIMIT_LIVEKIT_BURST=str(LIVEKIT_BURST),
    ) as f:
        yield f


def _client(front: Front, credential: str) -> httpx.Client:
    return httpx.Client(
        base_url=front.rest, headers={"Authorization": f"Bearer {credential}"}, timeout=20
    )


def _scope(reply: httpx.Response) -> str:
    assert reply.status_code == 429, reply.text
    assert error_reason(reply) == "RATE_LIMITED"
    info = next(d for d in reply.json()["details"] if d["@type"].endswith("ErrorInfo"))
    return str(info["metadata"]["scope"])


def test_one_credentials_flood_is_limited_and_other_tenants_keep_succeeding(
    limited: Front, new_tenant: Callable[..., Tenant]
) -> None:
    flooder, other = new_tenant(), new_tenant()
    with _client(limited, flooder.api_key) as flood, _client(limited, other.api_key) as calm:
        statuses = []
        for i in range(CREDENTIAL_BURST + 6):
            statuses.append(flood.get("/v1/tenant/settings").status_code)
            if i % 3 == 0:  # the other tenant, well within its own budget, throughout
                assert calm.get("/v1/tenant/settings").status_code == 200
        assert statuses[:CREDENTIAL_BURST] == [200] * CREDENTIAL_BURST
        assert statuses[-3:] == [429] * 3
        assert _scope(flood.get("/v1/tenant/settings")) == "credential"
    # The same tenant's other credentials have budgets of their own.
    with _client(limited, flooder.session_token("alice")) as alice:
        assert alice.get("/v1/tenant/settings").status_code == 200


def test_a_tenants_flood_over_many_credentials_hits_the_tenant_limit_only(
    limited: Front, new_tenant: Callable[..., Tenant]
) -> None:
    flooder, other = new_tenant(), new_tenant()
    tokens = [flooder.session_token(f"user{i}") for i in range(5)]  # minted on the main stack
    statuses: list[int] = []
    limited_reply = None
    for token in tokens:
        with _client(limited, token) as user:
            for _ in range(CREDENTIAL_BURST - 2):  # each stays under its own budget
                reply = user.get("/v1/tenant/settings")
                statuses.append(reply.status_code)
                if reply.status_code == 429:
                    limited_reply = reply
    assert statuses.count(200) <= TENANT_BURST + 2
    assert statuses.count(429) >= len(statuses) - TENANT_BURST - 2
    assert limited_reply is not None and _scope(limited_reply) == "tenant"
    with _client(limited, other.api_key) as calm:
        assert [calm.get("/v1/tenant/settings").status_code for _ in range(5)] == [200] * 5


def test_livekit_webhooks_have_their_own_budget(
    limited: Front, new_tenant: Callable[..., Tenant]
) -> None:
    tenant = new_tenant()
    room = tenant.room("alice", "bob")
    active = f"/chat/rooms/{room}/calls/active"
    # A user's flood on the calls replica ...
    with _client(limited, tenant.session_token("alice")) as alice:
        replies = [alice.get(active) for _ in range(CREDENTIAL_BURST + 1)]
        assert [r.status_code for r in replies[:CREDENTIAL_BURST]] == [200] * CREDENTIAL_BURST
        assert _scope(replies[-1]) == "credential"
    with httpx.Client(base_url=limited.rest, timeout=20) as anonymous:

        def webhook(authorization: str, body: str = "{}") -> httpx.Response:
            return anonymous.post(
                "/livekit/webhook",
                content=body.encode(),
                headers={
                    "Content-Type": "application/webhook+json",
                    "Authorization": authorization,
                },
            )

        event = lk_webhook.WebhookEvent(event="room_started", room=models.Room(name="r"))
        body, signature = signed_webhook(event)
        # ... leaves LiveKit's budget whole; so does a flood of unsigned junk, which is
        # refused without spending any of it (the budget is spent after the signature),
        junk = [webhook("x").status_code for _ in range(3 * LIVEKIT_BURST)]
        assert junk == [401] * len(junk), junk
        signed = [webhook(signature, body).status_code for _ in range(LIVEKIT_BURST)]
        assert signed == [200] * LIVEKIT_BURST, signed
        # and LiveKit's own flood is limited by its budget alone,
        assert _scope(webhook(signature, body)) == "endpoint"
    # while the tenant's other users on that replica carry on.
    with _client(limited, tenant.session_token("bob")) as bob:
        assert bob.get(active).status_code == 200
