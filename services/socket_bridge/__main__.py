import uvicorn

from services.common.logging import configure_logging
from services.common.settings import load_settings
from services.socket_bridge.app import create_app

settings = load_settings(SERVICE_NAME="socket-bridge")
configure_logging("socket-bridge", settings.LOG_LEVEL)
app, _ = create_app(settings)
uvicorn.run(
    app,
    host=settings.HTTP_HOST,
    port=settings.HTTP_PORT,
    log_config=None,  # our JSON logging, configured above
    lifespan="on",
    timeout_graceful_shutdown=int(settings.SHUTDOWN_GRACE_SECONDS),
)
