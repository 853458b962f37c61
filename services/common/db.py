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
from psycopg import OperationalError
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import exc as sa_exc
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


# psycopg_pool doubles its pause between attempts at a lost connection without a ceiling
# (1, 3, 7, 15, 31 s ... after the loss): a pool that lost its server for 16 s would try
# again 15 s after a standby took over. It gives up on an attempt after this long, and a
# request waiting for a connection starts a fresh one, so while requests wait the pool
# tries about every second.
RECONNECT_SECONDS = 2.0


class Pool(AsyncConnectionPool[PsycopgConnection[Any]]):
    """A psycopg pool that, when a connection comes back broken (its server died or
    failed over), checks all its idle ones at once: they went with the same server, and
    each would otherwise fail one request of its own, however long after the failover it
    is next taken out."""

    _checking: asyncio.Task[None] | None = None

    async def putconn(self, conn: PsycopgConnection[Any]) -> None:
        broken = conn.broken
        await super().putconn(conn)
        if broken and not self.closed and (self._checking is None or self._checking.done()):
            self._checking = asyncio.get_running_loop().create_task(self._check_idle())
            # One turn of the loop: the check takes the idle connections out (or queues on
            # the pool's lock, which is first come, first served) before this task can ask
            # for another; the checking itself goes on in the background.
            await asyncio.sleep(0)

    async def _check_idle(self) -> None:
        try:
            await self.check()
        except Exception as exc:  # closing meanwhile; the next broken one checks again
            log.info("pool check skipped", extra={"fields": {"error": type(exc).__name__}})


async def open_pool(settings: Settings, max_size: int, min_size: int = 1) -> Pool:
    """A plain psycopg pool for hot paths (autocommit: transactions are explicit), where
    SQLAlchemy's per-statement cost and its pre-ping round trip show in the profile."""
    pool = Pool(
        settings.libpq_url,
        min_size=min(min_size, max_size),
        max_size=max_size,
        kwargs={"autocommit": True, **connect_params(settings)},
        timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        reconnect_timeout=RECONNECT_SECONDS,
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


def unavailable(exc: BaseException) -> bool:
    """Whether an error says the database cannot serve right now, so the same request may
    succeed when sent again (UNAVAILABLE, HTTP 503), not that the request is wrong: the
    server is gone or failing over (a broken connection, none to be had in time), or it
    gave up on this statement (a timeout, a lock wait, a deadlock, a serialization
    failure). psycopg files all of these under OperationalError (a pool timeout too);
    SQLAlchemy raises them wrapped (its own error, the original as the cause), and has a
    pool timeout of its own."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OperationalError | sa_exc.TimeoutError):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False


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
