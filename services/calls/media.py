"""LiveKit: access tokens, RoomService clean-up and webhook verification."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from livekit import api
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from services.common.errors import unauthenticated
from services.common.logging import log_fields
from services.common.settings import Settings

log = logging.getLogger(__name__)

TOKEN_TTL = timedelta(seconds=600)


def room_name(call_id: str) -> str:
    # One LiveKit room per call: the call id is never reused, so neither is the room.
    return call_id


@dataclass(frozen=True)
class MediaSignal:
    """What a LiveKit webhook tells the call: a media session ended, or the room did."""

    livekit_room: str
    room_finished: bool
    identity: str = ""
    # When the ended media session began (to tell an old session from the current one).
    session_started: datetime | None = None


def _signal(event: WebhookEvent) -> MediaSignal | None:
    """The webhooks that change a call; None for every other one."""
    if not event.room.name:
        return None
    if event.event == "room_finished":
        return MediaSignal(event.room.name, room_finished=True)
    if event.event != "participant_left":
        return None
    # A second connection of the same user replaces the first: not a departure.
    if event.participant.disconnect_reason == models.DisconnectReason.DUPLICATE_IDENTITY:
        return None
    started_ms = event.participant.joined_at_ms or event.participant.joined_at * 1000
    return MediaSignal(
        event.room.name,
        room_finished=False,
        identity=event.participant.identity,
        session_started=datetime.fromtimestamp(started_ms / 1000, UTC) if started_ms else None,
    )


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

    def webhook_signal(self, body: bytes, authorization: str | None) -> MediaSignal | None:
        """Verifies a LiveKit webhook's signature and says what it means for its call."""
        if not authorization:
            raise unauthenticated("missing LiveKit webhook signature")
        try:
            event = self._receiver.receive(body.decode(), authorization)
        except Exception:
            raise unauthenticated("invalid LiveKit webhook signature") from None
        return _signal(event)

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
