"""Fixtures: one real stack per test session; every test gets fresh tenants of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from devstack.procs import ROOT
from tests.stack import Stack, new_workdir


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    s = Stack(workdir=new_workdir())
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()


@dataclass
class Tenant:
    tenant_id: str
    api_key: str
    rest: str

    def api(self) -> httpx.Client:
        """A REST client (through Envoy) authenticated with the tenant's API key."""
        return httpx.Client(
            base_url=self.rest, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=20
        )

    def session_token(self, user_id: str, **body: object) -> str:
        with self.api() as c:
            reply = c.post("/v1/sessions", json={"userId": user_id, **body})
            assert reply.status_code == 200, reply.text
            return str(reply.json()["token"])

    def user(self, user_id: str) -> httpx.Client:
        """A REST client acting as one app user (session token)."""
        token = self.session_token(user_id)
        return httpx.Client(
            base_url=self.rest, headers={"Authorization": f"Bearer {token}"}, timeout=20
        )

    def room(self, *members: str) -> str:
        with self.api() as c:
            reply = c.post("/chat/rooms", json={"members": list(members)})
            assert reply.status_code == 200, reply.text
            return str(reply.json()["id"])

    def patch_settings(self, **calls: object) -> dict[str, object]:
        with self.api() as c:
            reply = c.patch("/v1/tenant/settings", json={"calls": calls})
            assert reply.status_code == 200, reply.text
            return dict(reply.json()["calls"])


def create_tenant(stack: Stack, name: str = "test", *extra: str) -> Tenant:
    """The bootstrap command-line tool, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "services.tenant.bootstrap", "--name", name, *extra],
        cwd=ROOT,
        env=stack.env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out)
    return Tenant(data["tenantId"], data["apiKey"], stack.rest)


@pytest.fixture
def new_tenant(stack: Stack) -> Callable[..., Tenant]:
    return lambda *extra: create_tenant(stack, "test", *extra)


@pytest.fixture
def tenant(new_tenant: Callable[..., Tenant]) -> Tenant:
    return new_tenant()


def error_reason(reply: httpx.Response) -> str:
    """The ErrorInfo reason of an error response rendered by Envoy."""
    body = reply.json()
    infos = [
        d for d in body.get("details", []) if d.get("@type", "").endswith("google.rpc.ErrorInfo")
    ]
    assert len(infos) == 1, body
    return str(infos[0]["reason"])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, list[str]]]:
    """A local HTTP server recording the paths POSTed to it: (its port, the paths)."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port, hits
    finally:
        await runner.cleanup()


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """LiveKit's rtc FFI (a Rust runtime) can panic while the interpreter tears down and
    abort the process after every result is in. Once pytest is done, leave with its own
    exit status and skip the native teardown."""
    if "livekit.rtc" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)
