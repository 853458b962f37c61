"""NATS JetStream plumbing shared by the relay, the socket bridge and the webhook intake."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from services.common import events
from services.common.logging import log_fields

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 120


async def ensure_stream(nc: NATS) -> None:
    js = nc.jetstream()
    config = StreamConfig(
        name=events.STREAM,
        subjects=[events.SUBJECTS],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=7 * 24 * 3600,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def connect(url: str, name: str) -> NATS:
    """A connection that keeps reconnecting for as long as the process lives."""

    async def on_error(exc: Exception) -> None:
        # nats-py otherwise logs bare "encountered error" lines; one structured line instead.
        log.warning("nats error", extra=log_fields(connection=name, error=type(exc).__name__))

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
    )
