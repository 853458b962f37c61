"""Tenant rows: creation, settings, webhook endpoint and API keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.auth import NewApiKey, generate_api_key
from services.common.errors import conflict, not_found
from services.common.interceptors import REVOKED_CHANNEL
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


_SETTINGS_COLUMNS: tuple[Any, ...] = (
    TENANTS.c.calls_enabled,
    TENANTS.c.max_participants,
    TENANTS.c.ring_timeout_seconds,
    TENANTS.c.default_type,
    TENANTS.c.busy_policy,
    TENANTS.c.guests_enabled,
    TENANTS.c.lobby,
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


# --- API keys -----------------------------------------------------------------------

MAX_API_KEYS = 20
_KEY_COLUMNS = (API_KEYS.c.id, API_KEYS.c.created_at, API_KEYS.c.last_used_at)
_ACTIVE = API_KEYS.c.revoked_at.is_(None)


async def _lock_tenant_keys(conn: AsyncConnection, tenant_id: str) -> list[str]:
    """Locks the tenant row, so every change to its keys runs one at a time, and returns
    the ids of its active keys as they stand under that lock."""
    locked = (
        await conn.execute(select(TENANTS.c.id).where(TENANTS.c.id == tenant_id).with_for_update())
    ).first()
    if locked is None:
        raise not_found("TENANT_NOT_FOUND", "tenant not found")
    rows = await conn.execute(
        select(API_KEYS.c.id).where(API_KEYS.c.tenant_id == tenant_id, _ACTIVE)
    )
    return list(rows.scalars())


async def create_api_key(conn: AsyncConnection, *, tenant_id: str) -> tuple[Row[Any], NewApiKey]:
    if len(await _lock_tenant_keys(conn, tenant_id)) >= MAX_API_KEYS:
        raise conflict(
            "TOO_MANY_API_KEYS", f"a tenant has at most {MAX_API_KEYS} active keys; revoke one"
        )
    key = generate_api_key()
    row = (
        await conn.execute(
            insert(API_KEYS)
            .values(id=key.key_id, tenant_id=tenant_id, secret_hash=key.secret_hash)
            .returning(*_KEY_COLUMNS)
        )
    ).one()
    return row, key


async def list_api_keys(conn: AsyncConnection, *, tenant_id: str) -> list[Row[Any]]:
    stmt = (
        select(*_KEY_COLUMNS)
        .where(API_KEYS.c.tenant_id == tenant_id, _ACTIVE)
        .order_by(API_KEYS.c.created_at, API_KEYS.c.id)
    )
    return list((await conn.execute(stmt)).all())


async def revoke_api_key(conn: AsyncConnection, *, tenant_id: str, key_id: str) -> None:
    """Revokes one active key; the last one stays (two concurrent revocations of a
    tenant's last two keys are serialized by the tenant row lock: the second sees one)."""
    active = await _lock_tenant_keys(conn, tenant_id)
    if key_id not in active:
        raise not_found("API_KEY_NOT_FOUND", "no active API key with this id")
    if len(active) == 1:
        raise conflict("LAST_API_KEY", "the tenant's last API key cannot be revoked")
    await conn.execute(
        update(API_KEYS).where(API_KEYS.c.id == key_id).values(revoked_at=func.now())
    )
    # Delivered at commit to every replica's Authenticator, which drops its cached entry.
    await conn.execute(select(func.pg_notify(REVOKED_CHANNEL, key_id)))
