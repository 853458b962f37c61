"""LiveKit: access tokens, RoomService clean-up and webhook verification."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import aiohttp
from livekit import api
from livekit.protocol.webhook import WebhookEvent

from services.common.errors import unauthenticated
from services.common.logging import log_fields
from services.common.settings import Settings

log = logging.getLogger(__name__)

TOKEN_TTL = timedelta(seconds=600)


def room_name(call_id: str) -> str:
    # One LiveKit room per call: the call id is never reused, so neither is the room.
    return call_id


class Media:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._receiver = api.WebhookReceiver(
            api.TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET)
        )
        self._api: api.LiveKitAPI | None = None

    def token(self, *, livekit_room: str, user_id: str) -> str:
        """Join grant for exactly one room; identity is the user id; 600 s TTL."""
        grants = api.VideoGrants(
            room_join=True,
            room=livekit_room,
            can_publish=True,
            can_subscribe=True,
            can_publish_data=True,
        )
        return (
            api.AccessToken(self.settings.LIVEKIT_API_KEY, self.settings.LIVEKIT_API_SECRET)
            .with_identity(user_id)
            .with_grants(grants)
            .with_ttl(TOKEN_TTL)
            .to_jwt()
        )

    def verify_webhook(self, body: bytes, authorization: str | None) -> WebhookEvent:
        if not authorization:
            raise unauthenticated("missing LiveKit webhook signature")
        try:
            return self._receiver.receive(body.decode(), authorization)
        except Exception:
            raise unauthenticated("invalid LiveKit webhook signature") from None

    def _client(self) -> api.LiveKitAPI:
        if self._api is None:
            self._api = api.LiveKitAPI(
                self.settings.LIVEKIT_URL,
                self.settings.LIVEKIT_API_KEY,
                self.settings.LIVEKIT_API_SECRET,
                timeout=aiohttp.ClientTimeout(total=self.settings.LIVEKIT_API_TIMEOUT_SECONDS),
            )
        return self._api

    async def delete_room(self, livekit_room: str) -> bool:
        """True when the room is gone (deleted now or never existed)."""
        try:
            await asyncio.wait_for(
                self._client().room.delete_room(api.DeleteRoomRequest(room=livekit_room)),
                self.settings.LIVEKIT_API_TIMEOUT_SECONDS,
            )
            return True
        except api.TwirpError as err:
            if err.code == "not_found":
                return True
            log.warning("livekit delete_room failed", extra=log_fields(code=err.code))
            return False
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("livekit unreachable", extra=log_fields(error=type(err).__name__))
            return False

    async def remove_participant(self, livekit_room: str, user_id: str) -> None:
        """Best effort: the participant's token is still scoped to this call only."""
        try:
            await asyncio.wait_for(
                self._client().room.remove_participant(
                    api.RoomParticipantIdentity(room=livekit_room, identity=user_id)
                ),
                self.settings.LIVEKIT_API_TIMEOUT_SECONDS,
            )
        except api.TwirpError as err:
            if err.code != "not_found":
                log.warning("livekit remove_participant failed", extra=log_fields(code=err.code))
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("livekit unreachable", extra=log_fields(error=type(err).__name__))

    async def close(self) -> None:
        if self._api is not None:
            await self._api.aclose()
