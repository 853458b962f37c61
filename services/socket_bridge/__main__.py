"""`python -m services.socket_bridge`: the Socket.IO bridge under uvicorn.

Env: HTTP_HOST/HTTP_PORT (listen address), DATABASE_URL (call.sync), NATS_* (see
services/events/jetstream.py), SOCKETS_MAX_PER_USER/_TENANT, SESSION_SIGNING_KEY (or
SESSION_SIGNING_KEY_FILE), LOG_LEVEL, OTEL_EXPORTER_OTLP_ENDPOINT (tracing). SIGTERM:
uvicorn stops accepting, closes the sockets (clients reconnect to another replica), then
the lifespan drains NATS.
"""

import uvicorn

from services.common import tracing
from services.common.logging import configure_logging
from services.common.settings import load_settings
from services.socket_bridge.app import create_app


def main() -> None:
    settings = load_settings(SERVICE_NAME="socket-bridge")
    configure_logging("socket-bridge", settings.LOG_LEVEL)
    tracing.setup(settings)
    app, bridge = create_app(settings)
    uvicorn.run(
        app,
        host=settings.HTTP_HOST,
        port=settings.HTTP_PORT,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,
        lifespan="on",
        # New websocket-transport connections: the bridge's lean Engine.IO transport;
        # any other websocket (long-polling's upgrade): uvicorn's wsproto protocol.
        ws=bridge.sio.eio.protocol(),
        # No permessage-deflate (browsers offer it) for the others either: a compressor
        # per socket cost ~80 KiB of memory, and compressing every event once per
        # recipient socket was most of a fan-out's CPU (bench/README.md, round 5).
        ws_per_message_deflate=False,
        loop="uvloop",
        proxy_headers=True,
        timeout_graceful_shutdown=max(1, int(settings.SHUTDOWN_GRACE_SECONDS)),
    )


main()
