"""TenantService: sessions, settings and the webhook endpoint of the caller's tenant; its
webhook deliveries and events feed RPCs live in deliveries.py and feed.py."""

from __future__ import annotations

import re
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sendsar.tenant.v1 import tenant_pb2 as pb
from sendsar.tenant.v1 import tenant_pb2_grpc as pb_grpc
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import validation
from services.common.auth import API_KEY_PREFIX, Policy, current_principal, mint_session
from services.common.db import transaction
from services.common.errors import invalid, not_found
from services.common.page_tokens import PageTokens
from services.common.server import Registration, ServiceParts
from services.common.settings import Settings
from services.tenant import repo
from services.tenant.convert import timestamp
from services.tenant.deliveries import WebhookDeliveries, event_types
from services.tenant.feed import EventsFeed, Wakeups
from services.webhooks import ssrf_guard

POLICIES = {
    "CreateSession": Policy.API_KEY,
    "GetSettings": Policy.ANY,
    "UpdateSettings": Policy.API_KEY,
    "PutWebhook": Policy.API_KEY,
    "GetWebhook": Policy.API_KEY,
    "DeleteWebhook": Policy.API_KEY,
    "CreateApiKey": Policy.API_KEY,
    "ListApiKeys": Policy.API_KEY,
    "DeleteApiKey": Policy.API_KEY,
    "ListWebhookDeliveries": Policy.API_KEY,
    "RetryWebhookDelivery": Policy.API_KEY,
    "ReplayWebhook": Policy.API_KEY,
    "ListEvents": Policy.API_KEY,
}

_KEY_ID = re.compile(r"[0-9a-f]{16}")


def _api_key(row: Row[Any]) -> pb.ApiKey:
    return pb.ApiKey(
        id=row.id,
        prefix=f"{API_KEY_PREFIX}{row.id}_",
        created_at=timestamp(row.created_at),
        last_used_at=timestamp(row.last_used_at),
    )


def _call_settings(row: Row[Any]) -> pb.CallSettings:
    return pb.CallSettings(
        enabled=row.calls_enabled,
        max_participants=row.max_participants,
        ring_timeout_seconds=row.ring_timeout_seconds,
        default_type=row.default_type,
        busy_policy=row.busy_policy,
        guests_enabled=row.guests_enabled,
        lobby=row.lobby,
    )


def settings_changes(update: pb.CallSettingsUpdate) -> dict[str, Any]:
    """The columns a PATCH changes: only fields present in the body, each validated."""
    changes: dict[str, Any] = {}
    if update.HasField("enabled"):
        changes["calls_enabled"] = update.enabled
    if update.HasField("max_participants"):
        changes["max_participants"] = validation.int_range(
            update.max_participants, "calls.maxParticipants", 2, 100
        )
    if update.HasField("ring_timeout_seconds"):
        changes["ring_timeout_seconds"] = validation.int_range(
            update.ring_timeout_seconds, "calls.ringTimeoutSeconds", 5, 300
        )
    if update.HasField("default_type"):
        changes["default_type"] = validation.call_type(update.default_type, "calls.defaultType")
    if update.HasField("busy_policy"):
        changes["busy_policy"] = validation.one_of(
            update.busy_policy, "calls.busyPolicy", validation.BUSY_POLICIES
        )
    if update.HasField("guests_enabled"):
        changes["guests_enabled"] = update.guests_enabled
    if update.HasField("lobby"):
        changes["lobby"] = validation.one_of(update.lobby, "calls.lobby", validation.LOBBIES)
    return changes


class TenantService(WebhookDeliveries, EventsFeed, pb_grpc.TenantServiceServicer):
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.delivery_pages = PageTokens(settings.SESSION_SIGNING_KEY, "webhook deliveries")
        # The events feed's long polls (services/tenant/feed.py).
        self.wakeups = Wakeups(settings)
        self.waiting: dict[str, int] = {}  # tenant -> requests waiting now
        self._lanes: dict[str, int] = {}  # tenant -> its outbox lane

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Any
    ) -> pb.CreateSessionResponse:
        principal = current_principal()
        user_id = validation.user_id(request.user_id)
        ttl = self.settings.SESSION_DEFAULT_TTL_SECONDS
        if request.HasField("ttl_seconds"):
            ttl = validation.int_range(
                request.ttl_seconds, "ttlSeconds", 60, self.settings.SESSION_MAX_TTL_SECONDS
            )
        if request.HasField("name") and len(request.name) > 200:
            raise invalid("name", "must be at most 200 characters")
        token, expires_at = mint_session(
            signing_key=self.settings.SESSION_SIGNING_KEY,
            tenant_id=principal.tenant_id,
            user_id=user_id,
            name=request.name if request.HasField("name") else None,
            ttl_seconds=ttl,
            # Revoking this key ends the session (the Authenticator checks it).
            api_key_id=principal.api_key_id,
        )
        return pb.CreateSessionResponse(
            token=token, expires_at=timestamp_pb2.Timestamp(seconds=expires_at)
        )

    async def GetSettings(
        self, request: pb.GetSettingsRequest, context: Any
    ) -> pb.GetSettingsResponse:
        tenant_id = current_principal().tenant_id
        async with self.engine.connect() as conn:
            row = await repo.get_settings(conn, tenant_id=tenant_id)
        if row is None:
            raise not_found("TENANT_NOT_FOUND", "tenant not found")
        return pb.GetSettingsResponse(calls=_call_settings(row))

    async def UpdateSettings(
        self, request: pb.UpdateSettingsRequest, context: Any
    ) -> pb.UpdateSettingsResponse:
        tenant_id = current_principal().tenant_id
        changes = settings_changes(request.calls)
        async with transaction(self.engine) as conn:
            row = await repo.update_settings(conn, tenant_id=tenant_id, changes=changes)
        if row is None:
            raise not_found("TENANT_NOT_FOUND", "tenant not found")
        return pb.UpdateSettingsResponse(calls=_call_settings(row))

    async def PutWebhook(
        self, request: pb.PutWebhookRequest, context: Any
    ) -> pb.PutWebhookResponse:
        tenant_id = current_principal().tenant_id
        url = validation.http_url(request.url)
        events = event_types(list(request.events), "events")
        try:
            ssrf_guard.target(url)  # what delivery will parse it as
        except ValueError:
            raise invalid("url", "must be an absolute http or https URL") from None
        if not self.settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
            try:
                await ssrf_guard.check_url(url)
            except ssrf_guard.TargetNotAllowed:
                # One fixed text: which addresses a name has (or that it has none) stays ours.
                raise invalid(
                    "url", ssrf_guard.REFUSED, reason="WEBHOOK_TARGET_NOT_ALLOWED"
                ) from None
        async with transaction(self.engine) as conn:
            secret = await repo.put_webhook(conn, tenant_id=tenant_id, url=url, events=events)
        return pb.PutWebhookResponse(url=url, events=events, secret=secret)

    async def GetWebhook(
        self, request: pb.GetWebhookRequest, context: Any
    ) -> pb.GetWebhookResponse:
        async with self.engine.connect() as conn:
            row = await repo.get_webhook(conn, tenant_id=current_principal().tenant_id)
        if row is None:
            raise not_found("WEBHOOK_NOT_SET", "no webhook endpoint is set")
        return pb.GetWebhookResponse(url=row.url, events=row.events)

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Any
    ) -> pb.DeleteWebhookResponse:
        # Idempotent: deleting an absent endpoint succeeds.
        async with transaction(self.engine) as conn:
            await repo.delete_webhook(conn, tenant_id=current_principal().tenant_id)
        return pb.DeleteWebhookResponse()

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Any
    ) -> pb.CreateApiKeyResponse:
        async with transaction(self.engine) as conn:
            row, key = await repo.create_api_key(conn, tenant_id=current_principal().tenant_id)
        return pb.CreateApiKeyResponse(api_key=_api_key(row), key=key.plaintext)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Any
    ) -> pb.ListApiKeysResponse:
        async with self.engine.connect() as conn:
            rows = await repo.list_api_keys(conn, tenant_id=current_principal().tenant_id)
        return pb.ListApiKeysResponse(api_keys=[_api_key(r) for r in rows])

    async def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: Any
    ) -> pb.DeleteApiKeyResponse:
        if not _KEY_ID.fullmatch(request.id):
            raise invalid("id", "is not an API key id")
        async with transaction(self.engine) as conn:
            await repo.revoke_api_key(
                conn, tenant_id=current_principal().tenant_id, key_id=request.id
            )
        return pb.DeleteApiKeyResponse()


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    servicer = TenantService(settings, engine)

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_TenantServiceServicer_to_server(servicer, server)

    name = pb.DESCRIPTOR.services_by_name["TenantService"].full_name
    return ServiceParts(
        registrations=[Registration(add, name, POLICIES)], closers=[servicer.wakeups.close]
    )
