"""The NATS connection (the only nats.connect in the codebase) and the call stream.

Credentials and TLS come from settings: user/password, a token, a .creds file or an
nkey seed file, and a CA (plus a client certificate for mutual TLS). The connection
reconnects by itself for as long as the process lives.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from services.common.logging import log_fields
from services.common.settings import Settings
from services.events import types

log = logging.getLogger(__name__)

DUPLICATE_WINDOW_SECONDS = 120

Callback = Callable[[], Awaitable[None]]


def stream_config(settings: Settings) -> StreamConfig:
    # Age and bytes both bound the stream; past either, the oldest events go first.
    return StreamConfig(
        name=types.STREAM,
        subjects=[types.SUBJECTS],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=settings.NATS_STREAM_MAX_AGE_SECONDS,
        max_bytes=settings.NATS_STREAM_MAX_BYTES,
        discard=DiscardPolicy.OLD,
    )


async def ensure_stream(nc: NATS, settings: Settings) -> None:
    js = nc.jetstream()
    config = stream_config(settings)
    try:
        await js.add_stream(config)
    except BadRequestError:  # it exists: bring its limits up to date
        await js.update_stream(config)


def auth_options(settings: Settings) -> dict[str, Any]:
    """nats.connect keyword arguments for the configured credentials and TLS."""
    options: dict[str, Any] = {}
    if settings.NATS_USER:
        options.update(user=settings.NATS_USER, password=settings.NATS_PASSWORD or "")
    elif settings.NATS_TOKEN:
        options["token"] = settings.NATS_TOKEN
    elif settings.NATS_CREDS_FILE:
        options["user_credentials"] = settings.NATS_CREDS_FILE
    elif settings.NATS_NKEY_SEED_FILE:
        options["nkeys_seed"] = settings.NATS_NKEY_SEED_FILE
    if settings.NATS_TLS_CA_FILE or settings.NATS_TLS_CERT_FILE:
        context = ssl.create_default_context(cafile=settings.NATS_TLS_CA_FILE)
        if settings.NATS_TLS_CERT_FILE:
            context.load_cert_chain(settings.NATS_TLS_CERT_FILE, settings.NATS_TLS_KEY_FILE)
        options["tls"] = context
    return options


async def connect(
    settings: Settings,
    name: str,
    *,
    on_disconnected: Callback | None = None,
    on_reconnected: Callback | None = None,
) -> NATS:
    """A connection that keeps reconnecting for as long as the process lives."""

    async def on_error(exc: Exception) -> None:
        # nats-py otherwise logs bare "encountered error" lines; one structured line instead.
        log.warning("nats error", extra=log_fields(connection=name, error=type(exc).__name__))

    return await nats.connect(
        settings.NATS_URL,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        **auth_options(settings),
    )
