"""Cross-cutting RPC concerns, written once: request ids, auth, errors, logs, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import grpc
import psycopg
from prometheus_client import Counter, Histogram
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import auth, db, rate_limit, tracing, validation
from services.common.errors import INTERNAL, UNAVAILABLE, ServiceError, unauthenticated
from services.common.logging import log_fields, request_id_var, tenant_id_var
from services.common.models import API_KEYS
from services.common.rate_limit import RateLimiter

log = logging.getLogger("sendsar.rpc")

RPC_HANDLED = Counter("grpc_server_handled_total", "RPCs completed", ["method", "code"])
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "RPC latency",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

SLOW_RPC_SECONDS = 0.25

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


REVOKED_CHANNEL = "api_key_revoked"  # NOTIFY payload: the revoked key's id

Listener = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]


class Authenticator:
    """Turns request metadata into a Principal; API keys are checked against the database,
    and so are the keys that minted sessions (revoking a key ends its sessions).

    Verified keys are cached for a few seconds, so a hot key costs one lookup per
    interval, not per RPC, but only while this process LISTENs for revocations: a
    revoked key's entry is dropped when its NOTIFY arrives (well within a second, on
    every replica). Without a listening connection every request reads the database.
    """

    CACHE_SECONDS = 10.0
    # last_used_at is bookkeeping: written at most once a minute per key and replica.
    TOUCH_SECONDS = 60.0

    def __init__(
        self, engine: AsyncEngine, signing_key: str, listener: Listener | None = None
    ) -> None:
        self.engine = engine
        # Opens the LISTEN connection (db.connect_listener); None: never listen, never
        # cache (a one-shot tool).
        self.listener = listener
        self.signing_key = signing_key
        self.ring_tokens = auth.RingTokens(signing_key)
        self.guest_tokens = auth.GuestTokens(signing_key)
        self._cache: dict[str, tuple[float, str, str]] = {}  # key id -> (until, tenant, hash)
        self._revoked: set[str] = set()  # key ids read as revoked (never active again)
        self._touched: dict[str, float] = {}
        self._listening = False
        # Bumped by every revocation and (re)connect: a lookup that started before one
        # must not fill the cache with what it read.
        self._generation = 0
        self._listener: asyncio.Task[None] | None = None

    @staticmethod
    def credential(metadata: Mapping[str, str]) -> str | None:
        """The bearer token or X-Api-Key of a request (Authorization wins)."""
        credential = metadata.get("x-api-key")
        header = metadata.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise unauthenticated("authorization header must be 'Bearer <token>'")
            credential = value.strip()
        return credential

    async def authenticate(self, metadata: Mapping[str, str]) -> auth.Principal | None:
        credential = self.credential(metadata)
        if credential is None:
            return None
        if credential.startswith(auth.API_KEY_PREFIX):
            return await self._api_key(credential)
        if credential.startswith(auth.RING_TOKEN_PREFIX):
            return self.ring_tokens.verify(credential)
        if credential.startswith(auth.GUEST_TOKEN_PREFIX):
            return self.guest_tokens.verify(credential)
        if credential.startswith(auth.LINK_TOKEN_PREFIX):
            return None  # a call link: only the RPC that redeems it (public) reads it
        return await self.session(credential)

    async def socket(self, token: str) -> auth.Principal:
        """Who a Socket.IO connection is: an app user's session, or a guest session (whose
        socket then hears its one call, the only one it takes part in)."""
        if token.startswith(auth.GUEST_TOKEN_PREFIX):
            return self.guest_tokens.verify(token)
        return await self.session(token)

    async def session(self, token: str) -> auth.Principal:
        """A session token's principal, refused once the API key that minted it is revoked.
        Sessions minted before sessions named their key carry no key id: not checked."""
        principal = auth.verify_session(token, self.signing_key)
        if principal.api_key_id is not None:
            key = await self._active_key(principal.api_key_id)
            if key is None or key[0] != principal.tenant_id:
                raise unauthenticated("session revoked: the API key that minted it was revoked")
        return principal

    async def _api_key(self, credential: str) -> auth.Principal:
        parsed = auth.parse_api_key(credential)
        if parsed is None:
            raise unauthenticated("invalid API key")
        key_id, secret = parsed
        key = await self._active_key(key_id)
        if key is None or not auth.secret_matches(secret, key[1]):
            raise unauthenticated("invalid API key")
        await self._touch(key_id, time.monotonic())
        return auth.Principal(tenant_id=key[0], kind=auth.Kind.API_KEY, api_key_id=key_id)

    @property
    def revocation_epoch(self) -> int | None:
        """Changes whenever a key may have been revoked (a revocation NOTIFY, a reconnect of
        the listener); None while nothing listens (then anything may have changed)."""
        return self._generation if self._listening else None

    async def revoked_among(self, key_ids: set[str]) -> set[str]:
        """Which of these keys are revoked (one read)."""
        self._start_listener()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(API_KEYS.c.id).where(
                    API_KEYS.c.id.in_(sorted(key_ids)), API_KEYS.c.revoked_at.is_not(None)
                )
            )
            return set(rows.scalars())

    async def _active_key(self, key_id: str) -> tuple[str, str] | None:
        """(tenant id, secret hash) of an active key; None for a revoked or unknown one."""
        self._start_listener()
        if key_id in self._revoked:
            return None
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now and self._listening:
            return cached[1], cached[2]
        generation = self._generation
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        API_KEYS.c.tenant_id, API_KEYS.c.secret_hash, API_KEYS.c.revoked_at
                    ).where(API_KEYS.c.id == key_id)
                )
            ).first()
        if row is None:
            return None
        if row.revoked_at is not None:
            # Revocation is for good: no need to read this key again.
            if len(self._revoked) > 10_000:
                self._revoked.clear()
            self._revoked.add(key_id)
            return None
        if self._listening and generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (now + self.CACHE_SECONDS, row.tenant_id, row.secret_hash)
        return row.tenant_id, row.secret_hash

    async def _touch(self, key_id: str, now: float) -> None:
        last = self._touched.get(key_id)
        if last is not None and now - last < self.TOUCH_SECONDS:
            return
        if len(self._touched) > 10_000:
            self._touched.clear()
        self._touched[key_id] = now
        stale = or_(
            API_KEYS.c.last_used_at.is_(None),
            API_KEYS.c.last_used_at < func.now() - timedelta(seconds=self.TOUCH_SECONDS),
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(API_KEYS)
                    .where(API_KEYS.c.id == key_id, stale)
                    .values(last_used_at=func.now())
                )
        except Exception as exc:  # bookkeeping never fails the request it rides on
            log.warning(
                "api key last-used not recorded", extra=log_fields(error=type(exc).__name__)
            )

    def _start_listener(self) -> None:
        if self.listener is not None and (self._listener is None or self._listener.done()):
            self._listener = asyncio.get_running_loop().create_task(self._listen(self.listener))

    async def _listen(self, listener: Listener) -> None:
        while True:
            try:
                conn = await listener()
                try:
                    await conn.execute(f"LISTEN {REVOKED_CHANNEL}")
                    self._generation += 1
                    self._listening = True
                    async for note in conn.notifies():
                        self._generation += 1
                        self._cache.pop(note.payload, None)
                finally:
                    self._listening = False
                    self._cache.clear()
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "api key revocation listener down; keys are not cached meanwhile",
                    extra=log_fields(error=type(exc).__name__),
                )
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener


def credential_id(principal: auth.Principal) -> str:
    """What a per-credential limit counts: an API key, or one app user's sessions."""
    if principal.kind is auth.Kind.API_KEY:
        return f"key:{principal.api_key_id}"
    return f"{principal.kind.value}:{principal.tenant_id}:{principal.user_id}"


def _name(exc: BaseException) -> str:
    """An error's type, with the SQLSTATE class name psycopg gives it (AdminShutdown,
    QueryCanceled, ...) when SQLAlchemy wrapped it."""
    orig = getattr(exc, "orig", None)
    return type(orig if isinstance(orig, Exception) else exc).__name__


def _safe_trace(exc: BaseException) -> str:
    """Where an unexpected error came from, without its message (which may hold SQL or secrets)."""
    frames = traceback.extract_tb(exc.__traceback__)[-6:]
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
    )


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        policies: Mapping[str, auth.Policy],
        authenticator: Authenticator,
        limiter: RateLimiter,
    ) -> None:
        self.policies = policies
        self.authenticator = authenticator
        self.limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method.startswith("/grpc."):
            return handler  # health checks and reflection stay open
        # Secure by default: an RPC missing from the policy table needs an API key.
        policy = self.policies.get(method, auth.Policy.API_KEY)
        wrapped = self._wrap(method, policy, handler.unary_unary)
        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, policy: auth.Policy, inner: Handler) -> Handler:
        short = method.rsplit("/", 1)[-1]

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            request_id_var.set(metadata.get("x-request-id") or uuid.uuid4().hex)
            tenant_id_var.set(None)
            auth.principal_var.set(None)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            span = tracing.rpc_span(method, metadata)  # None while tracing is off
            try:
                if policy is auth.Policy.PUBLIC:
                    # Spent by the RPC after it checked its own credential.
                    rate_limit.public_budget.set(lambda: self.limiter.check_public(method))
                else:
                    principal = await self.authenticator.authenticate(metadata)
                    auth.check_policy(policy, principal)
                    assert principal is not None  # check_policy refuses None
                    auth.principal_var.set(principal)
                    tenant_id_var.set(principal.tenant_id)
                    self.limiter.check(principal, credential_id(principal))
                # Control characters and over-long strings or lists, in any field.
                validation.request_strings(request)
                return await inner(request, context)
            except ServiceError as err:
                code = err.code
                await context.abort_with_status(err.to_status())
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                code = grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                if db.unavailable(exc):  # a failover, a lost connection: worth a retry
                    code, status = grpc.StatusCode.UNAVAILABLE, UNAVAILABLE
                    log.warning(
                        "database unavailable", extra=log_fields(method=short, error=_name(exc))
                    )
                else:
                    code, status = grpc.StatusCode.INTERNAL, INTERNAL
                    log.error(
                        "unexpected error",
                        extra=log_fields(
                            method=short, error=type(exc).__name__, at=_safe_trace(exc)
                        ),
                    )
                await context.abort_with_status(status.to_status())
            finally:
                elapsed = time.perf_counter() - started
                if span is not None:
                    span.end(code)
                RPC_HANDLED.labels(short, code.name).inc()
                RPC_SECONDS.labels(short).observe(elapsed)
                # Every RPC is counted and timed above, and Envoy can log access; a log line
                # for each was a visible share of a request's CPU. Lines for what a person
                # looks into: failures and slow calls (the rest at DEBUG).
                level = (
                    logging.INFO
                    if code is not grpc.StatusCode.OK or elapsed >= SLOW_RPC_SECONDS
                    else logging.DEBUG
                )
                if log.isEnabledFor(level):
                    log.log(
                        level,
                        "rpc",
                        extra=log_fields(method=short, code=code.name, ms=round(elapsed * 1000, 2)),
                    )

        return wrapped
