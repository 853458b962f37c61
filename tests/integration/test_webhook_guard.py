"""The SSRF guard with WEBHOOK_ALLOW_PRIVATE_TARGETS off: PUT refuses non-public targets
(REST through Envoy, a tenant replica with the guard on), and delivery refuses them
again at send time (the dispatcher's own code, guard on and off, on one receiver)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import aiohttp
import httpx
import pytest
from sqlalchemy import insert, select

from services.common.db import create_engine
from services.common.models import DELIVERIES, new_id
from services.common.settings import Settings
from services.webhooks.delivery import Deliverer
from tests.conftest import Tenant, error_reason
from tests.integration.fronts import Front, front
from tests.stack import Stack

WEBHOOK = "/v1/tenant/webhook"


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Iterator[Front]:
    with front(stack, "guarded", ("tenant",), WEBHOOK_ALLOW_PRIVATE_TARGETS="false") as f:
        yield f


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9901/quitquitquit",  # Envoy's admin
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://10.0.0.7/hooks",
        "http://[::1]:8080/hooks",
        "http://[fd00::1]/hooks",
        "http://2130706433/hooks",  # 127.0.0.1 in disguise
        "http://localhost:9000/hooks",  # a name resolving to loopback
        "http://0.0.0.0/hooks",
    ],
)
def test_put_refuses_non_public_targets_and_sets_nothing(
    guarded: Front, tenant: Tenant, url: str
) -> None:
    with httpx.Client(
        base_url=guarded.rest, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=20
    ) as api:
        reply = api.put(WEBHOOK, json={"url": url})
        assert reply.status_code == 400, reply.text
        assert error_reason(reply) == "WEBHOOK_TARGET_NOT_ALLOWED"
        bad = next(d for d in reply.json()["details"] if d["@type"].endswith("BadRequest"))
        assert bad["fieldViolations"][0]["field"] == "url"
        assert api.get(WEBHOOK).status_code == 404


def test_the_shared_stack_allows_local_receivers(tenant: Tenant) -> None:
    with tenant.api() as api:
        assert api.put(WEBHOOK, json={"url": "http://127.0.0.1:9/hooks"}).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_delivery_refuses_private_targets_unless_allowed(
    stack: Stack,
    new_tenant: Callable[..., Tenant],
    receiver: tuple[int, list[str]],
    host: str,
) -> None:
    port, hits = receiver
    tenant = new_tenant()
    with tenant.api() as api:  # the shared stack allows it at PUT
        assert api.put(WEBHOOK, json={"url": f"http://{host}:{port}/hook"}).status_code == 200

    async def attempt(allow_private: bool) -> tuple[str, str | None]:
        settings = Settings(
            ENV="test",
            DATABASE_URL=stack.database_url,
            WEBHOOK_ALLOW_PRIVATE_TARGETS=allow_private,
        )
        engine = create_engine(settings)
        deliverer = Deliverer(settings, engine)
        row_id = new_id("whd")
        # Due far in the future, so the stack's own dispatcher leaves it alone.
        later = datetime.now(UTC) + timedelta(days=1)
        try:
            async with engine.begin() as conn:
                row = (
                    await conn.execute(
                        insert(DELIVERIES)
                        .values(
                            id=row_id,
                            tenant_id=tenant.tenant_id,
                            event_id=new_id("ev"),
                            event_type="call.started",
                            body="{}",
                            next_attempt_at=later,
                        )
                        .returning(DELIVERIES)
                    )
                ).one()
            deliverer.in_flight[tenant.tenant_id] += 1  # as the claim loop counts it
            async with aiohttp.ClientSession(connector=deliverer.connector()) as http:
                await deliverer.send(http, row)
            async with engine.connect() as conn:
                settled = (
                    await conn.execute(
                        select(DELIVERIES.c.status, DELIVERIES.c.last_error).where(
                            DELIVERIES.c.id == row_id
                        )
                    )
                ).one()
            return settled.status, settled.last_error
        finally:
            await engine.dispose()

    assert await attempt(allow_private=False) == ("pending", "target not allowed")
    assert hits == []
    assert await attempt(allow_private=True) == ("delivered", None)
    assert hits == ["/hook"]
