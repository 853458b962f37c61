"""gRPC server assembly and process lifecycle shared by every service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from sendsar.calls.v1 import call_log_pb2, calls_pb2
from sendsar.chat.v1 import chat_pb2
from sendsar.tenant.v1 import tenant_pb2
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import auth, db, tracing, workers
from services.common.db import connect_listener, create_engine, wait_for_database
from services.common.interceptors import Authenticator, RpcInterceptor
from services.common.logging import configure_logging
from services.common.rate_limit import RateLimiter
from services.common.settings import Settings, load_settings

log = logging.getLogger("sendsar.server")

# The public API (proto/), offered by server reflection from every process serving part of
# it: Envoy routes reflection to one backend (it cannot merge answers), which must then
# describe every service.
API_SERVICES = tuple(
    service.full_name
    for module in (tenant_pb2, chat_pb2, calls_pb2, call_log_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)


@dataclass
class Registration:
    """One gRPC service to serve: how to add it, its full name, who may call what."""

    add: Callable[[grpc.aio.Server], None]
    name: str
    policies: Mapping[str, auth.Policy]


@dataclass
class ServiceParts:
    registrations: Sequence[Registration]
    # Long-running loops (sweepers, relays); cancelled on shutdown.
    background: Sequence[Callable[[], Awaitable[None]]] = ()
    closers: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def create_server(
    settings: Settings, engine: AsyncEngine, parts: ServiceParts
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    policies: dict[str, auth.Policy] = {}
    for reg in parts.registrations:
        policies.update({f"/{reg.name}/{m}": p for m, p in reg.policies.items()})
    server = grpc.aio.server(
        interceptors=[
            RpcInterceptor(
                policies,
                Authenticator(
                    engine, settings.SESSION_SIGNING_KEY, partial(connect_listener, settings)
                ),
                RateLimiter(settings),
            )
        ],
        # Above Envoy's front-door limits (1 MiB bodies, 16 KiB headers), so that
        # Envoy, not this server, refuses oversize requests (413/431, not 429).
        options=[
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.max_metadata_size", 64 << 10),
            ("grpc.absolute_max_metadata_size", 64 << 10),
        ],
    )
    for reg in parts.registrations:
        reg.add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [reg.name for reg in parts.registrations]
    api = API_SERVICES if set(names) & set(API_SERVICES) else ()
    reflected = dict.fromkeys([*names, *api, health.SERVICE_NAME, reflection.SERVICE_NAME])
    reflection.enable_server_reflection(list(reflected), server)
    port = server.add_insecure_port(f"{settings.GRPC_HOST}:{settings.GRPC_PORT}")
    return server, port, health_servicer


async def _set_all(health_servicer: Any, names: Sequence[str], status: int) -> None:
    for name in ("", *names):
        await health_servicer.set(name, status)


async def serve(
    settings: Settings, build: Callable[[Settings, AsyncEngine], Awaitable[ServiceParts]]
) -> None:
    engine = create_engine(settings)
    await wait_for_database(engine, settings.DB_WAIT_SECONDS)
    parts = await build(settings, engine)
    server, port, health_servicer = await create_server(settings, engine, parts)
    if settings.METRICS_PORT:
        start_http_server(settings.METRICS_PORT, addr=settings.GRPC_HOST)
    await server.start()
    names = [reg.name for reg in parts.registrations]
    await _set_all(health_servicer, names, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"fields": {"port": port, "services": names}})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(_supervise(job)) for job in parts.background]
    await stop.wait()

    log.info("shutting down")
    await _set_all(health_servicer, names, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(settings.SHUTDOWN_GRACE_SECONDS)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for close in parts.closers:
        await close()
    await engine.dispose()


async def _supervise(job: Callable[[], Awaitable[None]]) -> None:
    """Keeps a background loop alive: an unexpected error restarts it after a pause."""
    name = getattr(job, "__qualname__", repr(job))
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The database away (a failover) is expected now and then; anything else is a bug.
            log.log(
                logging.WARNING if db.unavailable(exc) else logging.ERROR,
                "background job failed; restarting",
                extra={"fields": {"job": name, "error": type(exc).__name__}},
            )
            await asyncio.sleep(1.0)


def main(service: str, build: Callable[[Settings, AsyncEngine], Awaitable[ServiceParts]]) -> None:
    settings = load_settings(SERVICE_NAME=service)
    configure_logging(service, settings.LOG_LEVEL)
    if settings.WORKERS > 1:
        raise SystemExit(workers.supervise(settings))
    tracing.setup(settings)  # in the worker: the supervisor serves nothing
    # uvloop: a faster event loop for every service (grpc.aio runs on it).
    uvloop.run(serve(settings, build))
