"""Database engine and transactions (SQLAlchemy async over psycopg 3)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.common.settings import Settings

log = logging.getLogger(__name__)


def libpq_options() -> str:
    """Server settings for every connection of ours (SQLAlchemy's and plain psycopg's)."""
    # Our own statements are short; a stuck lock must not hold a request forever.
    return "-c lock_timeout=5000 -c statement_timeout=15000"


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_POOL_SIZE,
        pool_pre_ping=True,
        connect_args={"options": libpq_options()},
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
