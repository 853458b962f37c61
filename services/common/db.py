"""Database engine, session parameters and transactions (SQLAlchemy async over psycopg 3).

Every connection carries TCP keepalives (client and server side) and three server-side
bounds, so no session holds a lock forever:

- idle_in_transaction_session_timeout ends a session whose client stopped talking inside
  a transaction (a frozen or vanished process), releasing its row and advisory locks;
- lock_timeout bounds a wait for a lock, statement_timeout a single statement;
- keepalives find a peer that vanished without closing TCP (the server drops the session,
  the client stops waiting for a dead server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection as PsycopgConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.common.settings import Settings

log = logging.getLogger(__name__)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def connect_params(settings: Settings) -> dict[str, Any]:
    """libpq connection parameters for every connection (pooled or LISTEN)."""
    server = {
        "lock_timeout": _ms(settings.DB_LOCK_TIMEOUT_SECONDS),
        "statement_timeout": _ms(settings.DB_STATEMENT_TIMEOUT_SECONDS),
        "idle_in_transaction_session_timeout": _ms(settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS),
        # The server's side of the keepalives: a client that vanished loses its session.
        "tcp_keepalives_idle": settings.DB_KEEPALIVES_IDLE_SECONDS,
        "tcp_keepalives_interval": settings.DB_KEEPALIVES_INTERVAL_SECONDS,
        "tcp_keepalives_count": settings.DB_KEEPALIVES_COUNT,
    }
    return {
        "connect_timeout": settings.DB_CONNECT_TIMEOUT_SECONDS,
        "keepalives": 1,
        "keepalives_idle": settings.DB_KEEPALIVES_IDLE_SECONDS,
        "keepalives_interval": settings.DB_KEEPALIVES_INTERVAL_SECONDS,
        "keepalives_count": settings.DB_KEEPALIVES_COUNT,
        # Unacknowledged data (a server gone mid-query) fails the connection as well.
        "tcp_user_timeout": _ms(
            settings.DB_KEEPALIVES_IDLE_SECONDS
            + settings.DB_KEEPALIVES_INTERVAL_SECONDS * settings.DB_KEEPALIVES_COUNT
        ),
        # Which process holds a session (and its locks) shows in pg_stat_activity.
        "application_name": f"{settings.SERVICE_NAME}-{os.getpid()}"[:63],
        "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
    }


def create_engine(settings: Settings, pool_size: int | None = None) -> AsyncEngine:
    size = pool_size or settings.DB_POOL_SIZE
    # The URL names the driver only: the connection comes from libpq's keywords, which
    # hold several hosts in the failover form (SQLAlchemy's URL parser refuses those).
    return create_async_engine(
        "postgresql+psycopg://",
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        connect_args={**settings.database_params, **connect_params(settings)},
    )


Pool = AsyncConnectionPool[PsycopgConnection[Any]]


async def open_pool(settings: Settings, max_size: int, min_size: int = 1) -> Pool:
    """A plain psycopg pool for hot paths (autocommit: transactions are explicit), where
    SQLAlchemy's per-statement cost and its pre-ping round trip show in the profile."""
    pool: Pool = AsyncConnectionPool(
        settings.libpq_url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs={"autocommit": True, **connect_params(settings)},
        timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        open=False,
    )
    await pool.open(wait=True, timeout=settings.DB_WAIT_SECONDS)
    return pool


async def connect_listener(settings: Settings) -> PsycopgConnection[Any]:
    """A connection for LISTEN, opened like every pooled one (all hosts, keepalives,
    server-side bounds), so it finds the primary after a failover as they do."""
    return await PsycopgConnection.connect(
        settings.libpq_url, autocommit=True, **connect_params(settings)
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction: committed when the block exits normally, rolled back otherwise."""
    async with engine.begin() as conn:
        yield conn


async def wait_for_database(engine: AsyncEngine, seconds: float) -> None:
    """Bounded wait for the database at start; fails with a clear message."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"database not reachable after {seconds:.0f}s ({type(exc).__name__})"
                ) from None
            log.info("waiting for the database")
            await asyncio.sleep(0.5)
