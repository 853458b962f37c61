"""Reads of the calls model for other services, owned here so the model can change
without them: `call.sync` for the socket bridge."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls import store
from services.calls.convert import call_to_pb


async def live_calls(engine: AsyncEngine, *, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
    """What a user's socket gets as `call.sync` on every (re)connect: the tenant's ringing
    or active calls the user takes part in (not removed from) whose room still has the
    user as a member, each rendered exactly as REST renders a Call."""
    async with engine.connect() as conn:
        # The store speaks psycopg: the engine's connection underneath.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        calls = await store.calls_of_user(raw, tenant=tenant_id, user=user_id)
    return [
        json_format.MessageToDict(call_to_pb(call), always_print_fields_with_no_presence=True)
        for call in calls
    ]
