"""The demo web app's server (`make dev` only; never deployed): the built page from
web/demo (`make demo` → .cache/demo) and one dev-only endpoint that hands a demo user a
session token.

The tenant's API key stays here, server-side: the page asks POST /demo/session for a
user and gets that user's session token and demo rooms, which this server creates once
per tenant (through the public REST API, like any tenant backend) and remembers in a
state file; it enables guests for the tenant then too, so that a demo call can invite
one (the guest page, guest.html, needs no session: its link is its credential). Envoy
routes /demo/ here in the local stack; the pages then call the REST API and Socket.IO
like any app would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from devstack.procs import ROOT
from services.common.logging import configure_logging, log_fields

log = logging.getLogger("demo")

USERS = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}
ROOMS = [
    ("Alice & Bob", ["alice", "bob"]),
    ("Alice & Carol", ["alice", "carol"]),
    ("Bob & Carol", ["bob", "carol"]),
    ("Team (group)", ["alice", "bob", "carol"]),
]
# The only files served: no part of a URL ever becomes a file system path.
STATIC_FILES = {
    "": "index.html",
    **{
        f: f
        for f in (
            *("index.html", "app.js", "app.js.map"),
            *("guest.html", "guest.js", "guest.js.map"),
            "style.css",
        )
    },
}


class DemoError(Exception):
    """The REST API refused a call this server made (shown to the page as 502)."""


class Demo:
    def __init__(
        self, *, api: str, public_api: str, credentials: Path, state: Path, static: Path
    ) -> None:
        self.api, self.public_api = api.rstrip("/"), public_api.rstrip("/")
        self.credentials, self.state, self.static = credentials, state, static
        self.http: ClientSession | None = None
        self._rooms_lock = asyncio.Lock()  # two tabs signing in at once create rooms once

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.to_demo)
        app.router.add_get("/demo", self.to_demo)
        app.router.add_get("/demo/config.json", self.config)
        app.router.add_post("/demo/session", self.session)
        app.router.add_get("/demo/{name:.*}", self.file)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        self.http = ClientSession(timeout=ClientTimeout(total=15))

    async def _close(self, _: web.Application) -> None:
        if self.http is not None:
            await self.http.close()

    # --- pages -----------------------------------------------------------------

    async def to_demo(self, _: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/demo/")

    async def file(self, request: web.Request) -> web.StreamResponse:
        name = STATIC_FILES.get(request.match_info["name"])
        if name is None:
            raise web.HTTPNotFound()
        path = self.static / name
        if not path.is_file():
            return web.Response(
                status=503, text="The demo is not built: run `make demo` (needs npm).\n"
            )
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def config(self, _: web.Request) -> web.Response:
        users = [{"id": uid, "name": name} for uid, name in USERS.items()]
        return web.json_response({"apiUrl": self.public_api, "users": users})

    # --- the dev-only token endpoint ---------------------------------------------

    async def session(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        user_id = body.get("userId") if isinstance(body, dict) else None
        if not isinstance(user_id, str) or user_id not in USERS:
            return web.json_response(
                {"message": f"userId must be one of {', '.join(USERS)}"}, status=400
            )
        try:
            rooms = await self._rooms()
            session = await self._rest(
                "POST", "/v1/sessions", {"userId": user_id, "name": USERS[user_id]}
            )
        except DemoError as err:
            return web.json_response({"message": str(err)}, status=502)
        mine = [room for room in rooms if user_id in room["members"]]
        return web.json_response(
            {
                "userId": user_id,
                "name": USERS[user_id],
                "token": session["token"],
                "expiresAt": session["expiresAt"],
                "rooms": mine,
            }
        )

    async def _rooms(self) -> list[dict[str, Any]]:
        """The demo rooms of the current demo tenant, created on first use, when guests are
        enabled for it too (a state file from before the guest page gets that once)."""
        tenant_id = self._key()[0]
        async with self._rooms_lock:
            try:
                saved = json.loads(self.state.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("tenantId") != tenant_id:
                rooms = []
                for name, members in ROOMS:
                    body = {"members": members, "name": name}
                    room = await self._rest("POST", "/chat/rooms", body)
                    rooms.append({"id": room["id"], "name": name, "members": members})
                saved = {"tenantId": tenant_id, "rooms": rooms}
                self.state.write_text(json.dumps(saved, indent=2))
                log.info("demo rooms created", extra=log_fields(tenantId=tenant_id))
            if not saved.get("guestsEnabled"):
                settings = {"calls": {"guestsEnabled": True}}  # the lobby stays "host"
                await self._rest("PATCH", "/v1/tenant/settings", settings)
                saved["guestsEnabled"] = True
                self.state.write_text(json.dumps(saved, indent=2))
                log.info("guests enabled for the demo tenant", extra=log_fields(tenantId=tenant_id))
            return list(saved["rooms"])

    def _key(self) -> tuple[str, str]:
        try:
            data = json.loads(self.credentials.read_text())
            return str(data["tenantId"]), str(data["apiKey"])
        except (OSError, ValueError, KeyError) as err:
            raise DemoError(f"no demo tenant in {self.credentials} (start `make dev`)") from err

    async def _rest(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self._key()[1]}"}
        try:
            async with self.http.request(
                method, self.api + path, json=body, headers=headers
            ) as reply:
                data = await reply.json(content_type=None)
                if reply.status != 200:
                    raise DemoError(f"{method} {path}: {reply.status} {data.get('message', '')}")
                return dict(data)
        except (TimeoutError, OSError, ValueError) as err:
            raise DemoError(f"{method} {path}: the API at {self.api} is not reachable") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="REST API for this server")
    parser.add_argument(
        "--public-api", default="", help="REST/Socket.IO URL for the page (default: its origin)"
    )
    parser.add_argument("--credentials", type=Path, default=ROOT / ".dev" / "demo.json")
    parser.add_argument("--state", type=Path, default=ROOT / ".dev" / "demo-rooms.json")
    parser.add_argument("--static", type=Path, default=ROOT / ".cache" / "demo")
    args = parser.parse_args()
    if os.environ.get("ENV") == "production":
        sys.exit("devstack.demo hands out session tokens: it never runs with ENV=production")
    configure_logging("demo", os.environ.get("LOG_LEVEL", "INFO"))
    demo = Demo(
        api=args.api,
        public_api=args.public_api,
        credentials=args.credentials,
        state=args.state,
        static=args.static,
    )
    log.info("demo web app", extra=log_fields(url=f"http://127.0.0.1:{args.port}/demo/"))
    web.run_app(demo.app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
