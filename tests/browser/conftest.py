"""The demo web app's server (devstack/demo.py) for a fresh demo tenant, run as `make dev`
runs it, except that the page is told the test stack's API URL; and the browsers that
open its pages."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from devstack.procs import Proc, http_ok, wait_until
from tests.browser.chromium import BUILT, Page
from tests.conftest import Tenant, create_tenant
from tests.stack import Stack


@dataclass
class DemoServer:
    tenant: Tenant
    port: int

    def url(self, host: str = "127.0.0.1") -> str:
        """The page on its own origin (host 127.0.0.1 or localhost: two origins)."""
        return f"http://{host}:{self.port}/demo/"


@pytest.fixture(scope="session")
def demo_server(stack: Stack) -> Iterator[DemoServer]:
    tenant = create_tenant(stack, "browser-demo")
    credentials = stack.workdir / "demo.json"
    credentials.write_text(json.dumps({"tenantId": tenant.tenant_id, "apiKey": tenant.api_key}))
    proc = Proc(
        "demo",
        [
            sys.executable,
            "-m",
            "devstack.demo",
            f"--port={stack.demo_port}",
            f"--api={stack.rest}",
            f"--public-api={stack.rest}",
            f"--credentials={credentials}",
            f"--state={stack.workdir / 'demo-rooms.json'}",
        ],
        stack.env(),
        stack.workdir,
    )
    try:
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{stack.demo_port}/demo/config.json"),
            "demo",
            proc=proc,
        )
        yield DemoServer(tenant, stack.demo_port)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def demo_url(stack: Stack, demo_server: DemoServer) -> Callable[[str], str]:
    """The demo page's URL on a host (127.0.0.1 or localhost), for tests of a real call."""
    if not stack.livekit_enabled:
        pytest.skip("livekit-server not built (make livekit): the browser call needs media")
    if not BUILT.is_file():
        pytest.skip("the demo web app is not built: make demo")
    return demo_server.url


@pytest.fixture
def browser(stack: Stack) -> Iterator[Callable[[str], Page]]:
    """Opens a browser of its own for a named user: `browser("caller")`; each keeps a last
    screenshot and quits at the end of the test."""
    opened: list[Page] = []

    def open_page(name: str) -> Page:
        opened.append(Page(name, stack.workdir))
        return opened[-1]

    try:
        yield open_page
    finally:
        for page in opened:
            page.screenshot("last")
            page.quit()
