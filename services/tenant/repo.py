"""Tenant rows: creation, settings and webhook endpoint."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.auth import generate_api_key
from services.common.models import API_KEYS, TENANTS, WEBHOOKS, new_id

DEFAULT_SETTINGS: dict[str, Any] = {
    "max_participants": 8,
    "ring_timeout_seconds": 45,
    "default_type": "video",
}


@dataclass(frozen=True)
class CreatedTenant:
    tenant_id: str
    api_key: str


async def create_tenant(conn: AsyncConnection, *, name: str, calls_enabled: bool) -> CreatedTenant:
    tenant_id = new_id("tn")
    await conn.execute(
        insert(TENANTS).values(
            id=tenant_id, name=name, calls_enabled=calls_enabled, **DEFAULT_SETTINGS
        )
    )
    key = generate_api_key()
    await conn.execute(
        insert(API_KEYS).values(id=key.key_id, tenant_id=tenant_id, secret_hash=key.secret_hash)
    )
    return CreatedTenant(tenant_id, key.plaintext)


_SETTINGS_COLUMNS = (
    TENANTS.c.calls_enabled,
    TENANTS.c.max_participants,
    TENANTS.c.ring_timeout_seconds,
    TENANTS.c.default_type,
)


async def get_settings(conn: AsyncConnection, *, tenant_id: str) -> Row[Any] | None:
    return (await conn.execute(select(*_SETTINGS_COLUMNS).where(TENANTS.c.id == tenant_id))).first()


async def update_settings(
    conn: AsyncConnection, *, tenant_id: str, changes: dict[str, Any]
) -> Row[Any] | None:
    """One conditional UPDATE: concurrent partial updates of different fields both survive."""
    if not changes:
        return await get_settings(conn, tenant_id=tenant_id)
    stmt = (
        update(TENANTS)
        .where(TENANTS.c.id == tenant_id)
        .values(**changes)
        .returning(*_SETTINGS_COLUMNS)
    )
    return (await conn.execute(stmt)).first()


async def put_webhook(conn: AsyncConnection, *, tenant_id: str, url: str, events: list[str]) -> str:
    secret = "whsec_" + secrets.token_urlsafe(32)
    stmt = pg_insert(WEBHOOKS).values(tenant_id=tenant_id, url=url, events=events, secret=secret)
    stmt = stmt.on_conflict_do_update(
        index_elements=[WEBHOOKS.c.tenant_id],
        set_={
            "url": url,
            "events": events,
            "secret": secret,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    await conn.execute(stmt)
    return secret


async def get_webhook(conn: AsyncConnection, *, tenant_id: str) -> Row[Any] | None:
    stmt = select(WEBHOOKS.c.url, WEBHOOKS.c.events, WEBHOOKS.c.secret).where(
        WEBHOOKS.c.tenant_id == tenant_id
    )
    return (await conn.execute(stmt)).first()


async def delete_webhook(conn: AsyncConnection, *, tenant_id: str) -> bool:
    result = await conn.execute(delete(WEBHOOKS).where(WEBHOOKS.c.tenant_id == tenant_id))
    return bool(result.rowcount)
