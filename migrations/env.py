"""Alembic over SQLModel.metadata; the URL comes from DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

from services.common import models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata


def _url() -> str:
    url = context.config.attributes.get("url") or os.environ.get("DATABASE_URL", "")
    if not url:
        raise SystemExit("DATABASE_URL is not set")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            # Replicas may start together; one migrates, the others wait.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            context.run_migrations()


run_migrations_online()
