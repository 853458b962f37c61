"""The SSRF guard with WEBHOOK_ALLOW_PRIVATE_TARGETS off: PUT refuses non-public targets
(REST through Envoy, a tenant replica with the guard on), and delivery refuses them
again at send time (the dispatcher's own code, guard on and off, on one receiver)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import aiohttp
import httpx
import pytest

from services.common.models import new_id
from services.common.settings import Settings
from services.webhooks.claim import Claimed
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


def test_put_refusals_do_not_say_what_a_name_resolves_to(guarded: Front, tenant: Tenant) -> None:
    """One fixed text for every refusal: a name of loopback, a name that does not
    resolve and a private literal are told apart by nothing in the reply."""
    texts = set()
    with httpx.Client(
        base_url=guarded.rest, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=20
    ) as api:
        for url in (
            "http://localhost:9000/hooks",
            "http://no-such-host.invalid/hooks",
            "http://10.0.0.7/hooks",
        ):
            reply = api.put(WEBHOOK, json={"url": url})
            assert reply.status_code == 400, reply.text
            assert error_reason(reply) == "WEBHOOK_TARGET_NOT_ALLOWED"
            bad = next(d for d in reply.json()["details"] if d["@type"].endswith("BadRequest"))
            texts.add((reply.json()["message"], bad["fieldViolations"][0]["description"]))
    assert len(texts) == 1, texts
    for leak in ("127.0", "::1", "loopback", "localhost", "resolve to any", "10.0.0.7"):
        assert leak not in repr(texts)


def test_the_shared_stack_allows_local_receivers(tenant: Tenant) -> None:
    with tenant.api() as api:
        assert api.put(WEBHOOK, json={"url": "http://127.0.0.1:9/hooks"}).status_code == 200


# 127.0.0.1 with ideographic full stops, and in fullwidth digits: aiohttp connects to both
# as 127.0.0.1 (yarl normalises the host), so the check must read them so too. The first
# passed the old check (urlsplit keeps it as a name, which never reaches the resolver).
DISGUISED_LOOPBACK = ["127\u30020\u30020\u30021", "\uff11\uff12\uff17.\uff10.\uff10.\uff11"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", *DISGUISED_LOOPBACK])
async def test_delivery_refuses_private_targets_unless_allowed(
    stack: Stack,
    new_tenant: Callable[..., Tenant],
    receiver: tuple[int, list[str]],
    host: str,
) -> None:
    port, hits = receiver
    tenant = new_tenant()

    async def attempt(allow_private: bool) -> str | None:
        """The dispatcher's attempt at a row of this tenant: its recorded error."""
        settings = Settings(
            ENV="test",
            DATABASE_URL=stack.database_url,
            WEBHOOK_ALLOW_PRIVATE_TARGETS=allow_private,
        )
        deliverer = Deliverer(settings)
        row = Claimed(
            new_id("whd"),
            tenant.tenant_id,
            new_id("evt"),
            "call.started",
            "{}",
            0,
            datetime.now(UTC),
            False,
            f"http://{host}:{port}/hook",
            "whsec_test",
        )
        async with aiohttp.ClientSession(connector=deliverer.connector()) as http:
            return (await deliverer.attempt(http, row)).error

    assert await attempt(allow_private=False) == "target not allowed"
    assert hits == []
    assert await attempt(allow_private=True) is None
    assert hits == ["/hook"]
