"""The client SDK's own tests (sdk/js/test, built by `make sdk`), run by Node's test runner:
its unit tests (a fake socket), and its integration tests against this stack, each file
with a tenant of its own and, as a tenant backend would offer them, session tokens of any
lifetime (the API's POST /v1/sessions mints 60 s at least; the expiry test needs seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devstack.procs import ROOT
from services.common.auth import mint_session
from services.common.settings import DEV_SESSION_KEY
from tests.conftest import Tenant, create_tenant
from tests.stack import Stack

NODE = shutil.which("node")
SDK = ROOT / "sdk" / "js"
BUILT = SDK / ".build" / "test"
INTEGRATION = sorted(p.name.removesuffix(".test.js") for p in BUILT.glob("integration/*.test.js"))

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node not found (the SDK's tests need Node.js 18+)"),
    pytest.mark.skipif(not BUILT.is_dir(), reason="the SDK is not built: make sdk"),
]


def node_test(files: list[Path], env: dict[str, str]) -> None:
    assert NODE is not None and files
    run = subprocess.run(
        [NODE, "--test", *map(str, files)],
        cwd=SDK,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, f"{run.stdout[-8000:]}\n{run.stderr[-4000:]}"


def test_sdk_unit_tests() -> None:
    node_test(sorted(BUILT.glob("unit/*.test.js")), dict(os.environ))


@pytest.fixture
def sessions() -> Iterator[Callable[[Tenant], str]]:
    """A tenant backend's session endpoint: POST {userId, ttlSeconds} -> {token}."""
    tenants: dict[str, Tenant] = {}

    class Mint(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            token, _ = mint_session(
                signing_key=DEV_SESSION_KEY,
                tenant_id=tenants[self.path.strip("/")].tenant_id,
                user_id=str(body["userId"]),
                name=None,
                ttl_seconds=int(body["ttlSeconds"]),
            )
            data = json.dumps({"token": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the test output is Node's

    server = ThreadingHTTPServer(("127.0.0.1", 0), Mint)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def url(tenant: Tenant) -> str:
        tenants[tenant.tenant_id] = tenant
        return f"http://127.0.0.1:{server.server_address[1]}/{tenant.tenant_id}"

    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", INTEGRATION)
def test_sdk_against_the_stack(stack: Stack, sessions: Callable[[Tenant], str], name: str) -> None:
    tenant = create_tenant(stack, f"sdk-{name}")
    env = {
        **os.environ,
        "SENDSAR_API_URL": stack.rest,
        "SENDSAR_API_KEY": tenant.api_key,
        "SENDSAR_SESSIONS_URL": sessions(tenant),
    }
    node_test([BUILT / "integration" / f"{name}.test.js"], env)
