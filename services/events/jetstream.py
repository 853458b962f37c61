"""The NATS connection (the only nats.connect in the codebase) and the call stream.

Credentials and TLS come from settings: user/password, a token, a .creds file or an
nkey seed file, and a CA (plus a client certificate for mutual TLS). The connection
reconnects by itself for as long as the process lives, to any server of NATS_URL (a
cluster's servers, comma-separated; nats-py learns the others from the one it reaches).

Each connection's reply subjects start with `_INBOX.<its name>.`, so NATS permissions
can let a process read its own replies and nobody else's (deploy/k8s/overlays/prod/
nats-values.yaml).
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
    # In a cluster, NATS_STREAM_REPLICAS copies (R3: a node may die, its disk with it,
    # and every event acknowledged to the relay is still on a majority).
    return StreamConfig(
        name=types.STREAM,
        subjects=[types.SUBJECTS],
        storage=StorageType.FILE,
        num_replicas=settings.NATS_STREAM_REPLICAS,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=settings.NATS_STREAM_MAX_AGE_SECONDS,
        max_bytes=settings.NATS_STREAM_MAX_BYTES,
        discard=DiscardPolicy.OLD,
    )


async def ensure_stream(nc: NATS, settings: Settings) -> None:
    """Creates the stream, or brings an existing one's limits and replicas up to date
    (the publisher's job: the readers only look the stream up)."""
    js = nc.jetstream()
    config = stream_config(settings)
    try:
        await js.add_stream(config)
    except BadRequestError:  # it exists: bring its limits up to date
        await js.update_stream(config)


def inbox_prefix(name: str) -> str:
    """The reply subjects of a connection named `name` start with this (and a dot)."""
    return f"_INBOX.{name}"


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
        settings.nats_servers,
        name=name,
        inbox_prefix=inbox_prefix(name),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        # nats-py's default (2 min, 2 outstanding) left a connection to a frozen server
        # (its kernel still answers TCP) waiting for minutes.
        ping_interval=settings.NATS_PING_INTERVAL_SECONDS,
        max_outstanding_pings=2,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        **auth_options(settings),
    )
