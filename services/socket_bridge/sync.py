"""`call.sync`: the live calls a user should see after (re)connecting.

One query, kept apart so the call model's owner can re-point it: the ringing or active
calls of the tenant that the user is a participant of and whose room still has the user
as a member, each rendered exactly as REST renders a Call.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls import store
from services.calls.convert import call_to_pb


async def live_calls(engine: AsyncEngine, *, tenant_id: str, user_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        # The call store speaks psycopg directly (services/calls/store.py).
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        calls = await store.calls_of_user(raw, tenant=tenant_id, user=user_id)
    return [
        json_format.MessageToDict(call_to_pb(call), always_print_fields_with_no_presence=True)
        for call in calls
    ]
