"""Extra replicas with settings of their own, behind an Envoy of their own, sharing the
test stack's database and NATS: for behaviour the shared stack must not have (low rate
limits, the webhook guard on) and for checks across replicas."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from devstack import envoy
from devstack.procs import Proc, free_port, grpc_serving, http_ok, wait_until
from tests.stack import Stack

SERVICES = {"tenant": "services.tenant", "chat": "services.chat", "calls": "services.calls"}


@dataclass
class Front:
    rest: str
    procs: dict[str, Proc]


@contextmanager
def front(
    stack: Stack,
    name: str,
    services: tuple[str, ...],
    *,
    envoy_options: Mapping[str, Any] | None = None,
    **env: str,
) -> Iterator[Front]:
    """Replicas of `services` started with `env`; the other services are the stack's.
    `envoy_options` go to devstack.envoy.render (e.g. a low per-address rate limit)."""
    procs: dict[str, Proc] = {}
    upstreams = {s: f"127.0.0.1:{stack.grpc_ports[s]}" for s in SERVICES}
    try:
        for service in services:
            port = free_port()
            upstreams[service] = f"127.0.0.1:{port}"
            procs[service] = Proc(
                f"{name}-{service}",
                [sys.executable, "-m", SERVICES[service]],
                stack.env(GRPC_PORT=str(port), **env),
                stack.workdir,
            )
        for service, proc in procs.items():
            address = upstreams[service]
            wait_until(partial(grpc_serving, address), proc.name, proc=proc)
        listen, admin = free_port(), free_port()
        config = stack.workdir / f"{name}-envoy.yaml"
        config.write_text(
            envoy.render(
                envoy.Upstreams(
                    tenant=[upstreams["tenant"]],
                    chat=[upstreams["chat"]],
                    calls=[upstreams["calls"]],
                    bridge=[f"127.0.0.1:{stack.bridge_port}"],
                ),
                listen_port=listen,
                admin_port=admin,
                **(envoy_options or {}),
            )
        )
        procs["envoy"] = Proc(f"{name}-envoy", envoy.command(config), stack.env(), stack.workdir)
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{admin}/ready"),
            procs["envoy"].name,
            proc=procs["envoy"],
        )
        yield Front(rest=f"http://127.0.0.1:{listen}", procs=procs)
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()
