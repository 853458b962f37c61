"""Fair limits: token buckets per tenant, per credential and for public RPCs.

One tenant's flood empties its own buckets and gets 429 RATE_LIMITED; other tenants'
buckets are untouched. The buckets live in the process, so the limits apply per replica
(N replicas let a tenant through at up to N times the rate; see docs/decisions.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar

import grpc

from services.common import auth
from services.common.errors import ServiceError
from services.common.settings import Settings

# Bounded memory: beyond this many keys the least recently used bucket is dropped (it
# had refilled unless it was used within the last burst/rate seconds).
MAX_KEYS = 50_000


class TokenBuckets:
    """One token bucket per key: `rate` tokens a second, at most `burst` saved up. A
    request costs one token, or `cost` (bytes, say)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, float(burst), max_keys, clock
        # key -> (tokens, when counted); dict order is least recently used first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: float = 1.0) -> bool:
        """Spends `cost` if the bucket holds it; False (nothing spent) otherwise."""
        tokens = self._tokens(key)
        allowed = tokens >= cost
        self._keep(key, tokens - cost if allowed else tokens)
        return allowed

    def charge(self, key: str, cost: float) -> None:
        """Spends `cost` whatever the bucket holds (it may go below zero): for what must
        happen anyway, so that it still counts against what may be refused."""
        self._keep(key, self._tokens(key) - cost)

    def _tokens(self, key: str) -> float:
        saved = self._buckets.pop(key, None)
        if saved is None:
            return self.burst
        return min(self.burst, saved[0] + (self.clock() - saved[1]) * self.rate)

    def _keep(self, key: str, tokens: float) -> None:
        self._buckets[key] = (tokens, self.clock())
        if len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


def rate_limited(scope: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        f"too many requests for this {scope}; slow down and retry",
        metadata={"scope": scope},
    )


# A public RPC's budget, spent by the RPC itself once it has checked its own credential (a
# LiveKit signature): requests that fail the check spend none of it, so junk cannot use
# up what the real sender needs. Set by the interceptor for each public request.
public_budget: ContextVar[Callable[[], None] | None] = ContextVar("public_budget", default=None)


def spend_public_budget() -> None:
    """Spends one request of the current public RPC's budget (429 beyond)."""
    spend = public_budget.get()
    if spend is not None:
        spend()


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.tenants = TokenBuckets(
            settings.RATE_LIMIT_TENANT_PER_SECOND, settings.RATE_LIMIT_TENANT_BURST
        )
        self.credentials = TokenBuckets(
            settings.RATE_LIMIT_CREDENTIAL_PER_SECOND, settings.RATE_LIMIT_CREDENTIAL_BURST
        )
        self.public = TokenBuckets(
            settings.RATE_LIMIT_LIVEKIT_PER_SECOND, settings.RATE_LIMIT_LIVEKIT_BURST
        )

    def check_public(self, method: str) -> None:
        """Public RPCs (LiveKit's webhooks) have their own budget, apart from every tenant's."""
        if not self.public.take(method):
            raise rate_limited("endpoint")

    def check(self, principal: auth.Principal, credential_id: str) -> None:
        # The credential first: a flood from one key or user does not spend the tenant's
        # budget beyond its own.
        if not self.credentials.take(credential_id):
            raise rate_limited("credential")
        if not self.tenants.take(principal.tenant_id):
            raise rate_limited("tenant")
