"""`python -m tests.fast_receiver PORT`: a webhook receiver that answers every POST with
200 at once and keeps nothing, in a process of its own (so a test or bench that drives
the dispatcher does not share its CPU with the receiver)."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
