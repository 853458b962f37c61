"""The dev-only demo server (devstack/demo.py): behind Envoy at /demo/ in the local stack
only, session tokens for demo users without the API key ever leaving the server."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from aiohttp.test_utils import TestClient, TestServer

from devstack import envoy
from devstack.demo import Demo
from devstack.procs import ROOT
from tests.browser.conftest import DemoServer
from tests.conftest import create_tenant
from tests.stack import Stack


def session(stack: Stack, user_id: object) -> httpx.Response:
    return httpx.post(f"{stack.rest}/demo/session", json={"userId": user_id}, timeout=20)


def test_envoy_routes_demo_to_the_demo_server(stack: Stack, demo_server: DemoServer) -> None:
    config = httpx.get(f"{stack.rest}/demo/config.json", timeout=10)
    assert config.status_code == 200, config.text
    assert config.json()["apiUrl"] == stack.rest
    assert {u["id"] for u in config.json()["users"]} == {"alice", "bob", "carol"}
    for path in ("/demo/", "/demo/guest.html"):
        page = httpx.get(f"{stack.rest}{path}", timeout=10)
        # 200 once `make demo` has built it; otherwise the server says how to build it.
        assert (page.status_code, "Sendsar Calls" in page.text) == (200, True) or (
            page.status_code == 503 and "make demo" in page.text
        ), page.text


def test_session_endpoint_hands_out_a_session_token_and_the_users_rooms_guests_enabled(
    stack: Stack, demo_server: DemoServer
) -> None:
    with ThreadPoolExecutor(2) as pool:  # two tabs at once still get one set of rooms
        alice, bob = pool.map(lambda u: session(stack, u), ["alice", "bob"])
    assert alice.status_code == bob.status_code == 200, (alice.text, bob.text)
    assert demo_server.tenant.api_key not in alice.text + bob.text
    rooms = {r["name"]: r for r in alice.json()["rooms"]}
    assert set(rooms) == {"Alice & Bob", "Alice & Carol", "Team (group)"}
    assert rooms["Alice & Bob"] in bob.json()["rooms"]

    token = alice.json()["token"]
    with httpx.Client(
        base_url=stack.rest, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as as_alice:
        for room in rooms.values():  # a real session of the demo tenant, a member of each
            assert as_alice.get(f"/chat/rooms/{room['id']}/calls/active").status_code == 200
        # ...and only a session: API-key endpoints refuse it
        assert as_alice.post("/chat/rooms", json={"members": ["alice", "x"]}).status_code == 403
        # The demo tenant takes guests (the demo's guest page), with the lobby on.
        calls = as_alice.get("/v1/tenant/settings").json()["calls"]
        assert (calls["guestsEnabled"], calls["lobby"]) == (True, "host")


async def test_rooms_made_before_the_guest_page_are_kept_and_guests_enabled_once(
    stack: Stack, tmp_path: Path
) -> None:
    tenant = create_tenant(stack, "demo-before-guests")
    credentials = tmp_path / "demo.json"
    credentials.write_text(json.dumps({"tenantId": tenant.tenant_id, "apiKey": tenant.api_key}))
    rooms = [{"id": "room_old", "name": "Alice & Bob", "members": ["alice", "bob"]}]
    state = tmp_path / "demo-rooms.json"  # as the demo server wrote it before
    state.write_text(json.dumps({"tenantId": tenant.tenant_id, "rooms": rooms}))
    demo = Demo(
        api=stack.rest, public_api=stack.rest, credentials=credentials, state=state, static=tmp_path
    )
    async with TestClient(TestServer(demo.app())) as client:
        reply = await client.post("/demo/session", json={"userId": "alice"})
        assert reply.status == 200, await reply.text()
        assert (await reply.json())["rooms"] == rooms  # not made again
    with tenant.api() as api:
        assert api.get("/v1/tenant/settings").json()["calls"]["guestsEnabled"] is True
    assert json.loads(state.read_text()) == {
        "tenantId": tenant.tenant_id,
        "rooms": rooms,
        "guestsEnabled": True,
    }


def test_session_endpoint_refuses_other_users(stack: Stack, demo_server: DemoServer) -> None:
    for user_id in ("mallory", "", None, ["alice"]):
        assert session(stack, user_id).status_code == 400


def test_demo_is_never_in_the_kubernetes_config() -> None:
    upstreams = envoy.Upstreams(tenant=["t:1"], chat=["c:1"], calls=["k:1"], bridge=["b:1"])
    assert "/demo/" not in envoy.render(upstreams, listen_port=1, admin_port=2)
    assert "/demo/" not in (ROOT / "deploy" / "k8s" / "generated" / "envoy.yaml").read_text()


def test_demo_server_refuses_production() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "devstack.demo"],
        cwd=ROOT,
        env={"ENV": "production", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "ENV=production" in done.stderr
