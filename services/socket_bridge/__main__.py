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
    app, _ = create_app(settings)
    uvicorn.run(
        app,
        host=settings.HTTP_HOST,
        port=settings.HTTP_PORT,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,
        lifespan="on",
        ws="wsproto",
        loop="uvloop",
        proxy_headers=True,
        timeout_graceful_shutdown=max(1, int(settings.SHUTDOWN_GRACE_SECONDS)),
    )


main()
