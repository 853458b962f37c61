"""Alembic over SQLModel.metadata; the URL comes from DATABASE_URL (or DATABASE_URL_FILE).

Safe to run from every replica at once and to run again: the first run takes a
transaction-scoped advisory lock and migrates, the others wait for it and find nothing
left to do. In Kubernetes it runs as an init container of every Deployment that uses the
database (`alembic -x tolerate-newer=1 upgrade head`), so no pod of a new version serves
before its schema is in place; `tolerate-newer` lets a rolled-back image start against a
schema that a newer release already migrated (schema changes are expand/contract).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alembic import context
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, pool
from sqlmodel import SQLModel

from services.common import models  # noqa: F401  (registers the tables)
from services.common.settings import database_params

target_metadata = SQLModel.metadata
MIGRATION_LOCK = 727274
log = logging.getLogger("alembic.env")


def _url() -> str:
    url = context.config.attributes.get("url") or os.environ.get("DATABASE_URL", "")
    if not url and os.environ.get("DATABASE_URL_FILE"):
        url = Path(os.environ["DATABASE_URL_FILE"]).read_text().strip()
    if not url:
        raise SystemExit("DATABASE_URL (or DATABASE_URL_FILE) is not set")
    return url


def _schema_is_newer(connection: Connection) -> bool:
    """True when the database is at a revision this code does not know (a newer release)."""
    script = ScriptDirectory.from_config(context.config)
    for head in MigrationContext.configure(connection).get_current_heads():
        try:
            script.get_revision(head)
        except CommandError:
            return True
    return False


def run_migrations_online() -> None:
    tolerate_newer = context.get_x_argument(as_dictionary=True).get("tolerate-newer") == "1"
    # libpq's keywords, not the URL: SQLAlchemy cannot parse the multi-host form.
    engine = create_engine(
        "postgresql+psycopg://", poolclass=pool.NullPool, connect_args=database_params(_url())
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            # Replicas may start together; one migrates, the others wait.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            if tolerate_newer and _schema_is_newer(connection):
                log.warning("database schema is newer than this release; not migrating")
                return
            context.run_migrations()


run_migrations_online()
