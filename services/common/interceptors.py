"""Cross-cutting RPC concerns, written once: request ids, auth, errors, logs, metrics."""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import auth
from services.common.errors import INTERNAL, ServiceError, unauthenticated
from services.common.logging import log_fields, request_id_var, tenant_id_var
from services.common.models import API_KEYS

log = logging.getLogger("sendsar.rpc")

RPC_HANDLED = Counter("grpc_server_handled_total", "RPCs completed", ["method", "code"])
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "RPC latency",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class Authenticator:
    """Turns request metadata into a Principal; API keys are checked against the database."""

    # Recently verified keys, so a hot key costs one lookup per interval, not per RPC.
    CACHE_SECONDS = 10.0

    def __init__(self, engine: AsyncEngine, signing_key: str) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self._cache: dict[str, tuple[float, auth.Principal]] = {}

    async def authenticate(self, metadata: Mapping[str, str]) -> auth.Principal | None:
        credential = metadata.get("x-api-key")
        header = metadata.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise unauthenticated("authorization header must be 'Bearer <token>'")
            credential = value.strip()
        if credential is None:
            return None
        if credential.startswith(auth.API_KEY_PREFIX):
            return await self._api_key(credential)
        return auth.verify_session(credential, self.signing_key)

    async def _api_key(self, credential: str) -> auth.Principal:
        cached = self._cache.get(credential)
        now = time.monotonic()
        if cached and cached[0] > now:
            return cached[1]
        parsed = auth.parse_api_key(credential)
        if parsed is None:
            raise unauthenticated("invalid API key")
        key_id, secret = parsed
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(API_KEYS.c.tenant_id, API_KEYS.c.secret_hash).where(
                        API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None or not auth.secret_matches(secret, row.secret_hash):
            raise unauthenticated("invalid API key")
        principal = auth.Principal(tenant_id=row.tenant_id, kind=auth.Kind.API_KEY)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[credential] = (now + self.CACHE_SECONDS, principal)
        return principal


def _safe_trace(exc: BaseException) -> str:
    """Where an unexpected error came from, without its message (which may hold SQL or secrets)."""
    frames = traceback.extract_tb(exc.__traceback__)[-6:]
    return " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
    )


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, policies: Mapping[str, auth.Policy], authenticator: Authenticator) -> None:
        self.policies = policies
        self.authenticator = authenticator

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
            try:
                if policy is not auth.Policy.PUBLIC:
                    principal = await self.authenticator.authenticate(metadata)
                    auth.check_policy(policy, principal)
                    auth.principal_var.set(principal)
                    tenant_id_var.set(principal.tenant_id if principal else None)
                return await inner(request, context)
            except ServiceError as err:
                code = err.code
                await context.abort_with_status(err.to_status())
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                code = grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.error(
                    "unexpected error",
                    extra=log_fields(method=short, error=type(exc).__name__, at=_safe_trace(exc)),
                )
                await context.abort_with_status(INTERNAL.to_status())
            finally:
                elapsed = time.perf_counter() - started
                RPC_HANDLED.labels(short, code.name).inc()
                RPC_SECONDS.labels(short).observe(elapsed)
                log.info(
                    "rpc",
                    extra=log_fields(method=short, code=code.name, ms=round(elapsed * 1000, 2)),
                )

        return wrapped
