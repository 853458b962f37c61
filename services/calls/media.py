"""LiveKit: access tokens, RoomService clean-up and webhook verification."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import aiohttp
from livekit import api
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent
from prometheus_client import Counter

from services.common.errors import UNAVAILABLE, unauthenticated
from services.common.logging import log_fields
from services.common.settings import Settings

log = logging.getLogger(__name__)

TOKEN_TTL = timedelta(seconds=600)


def room_name(call_id: str) -> str:
    # One LiveKit room per call: the call id is never reused, so neither is the room
    # (domain.is_call_room tells our rooms by it).
    return call_id


# What each call type may publish (LiveKit's canPublishSources).
PUBLISH_SOURCES = {
    "audio": ["microphone"],
    "video": ["microphone", "camera", "screen_share", "screen_share_audio"],
}
# What a mute of a kind takes away from a participant's permission to publish.
MUTED_SOURCES = {
    "audio": ("microphone", "screen_share_audio"),
    "video": ("camera", "screen_share"),
}


def _taken(muted: Iterable[str]) -> set[str]:
    return {source for kind in muted for source in MUTED_SOURCES[kind]}


SignalKind = Literal["joined", "left", "room_finished"]

# Every DeleteRoom request, by why: "ended" (the room of an ended call, at its end, on a
# retry or after a late join), "stale" (reconciliation found a room no live call has).
ROOM_DELETIONS = Counter(
    "livekit_room_deletions_total", "DeleteRoom requests sent to LiveKit", ["why"]
)
DeleteWhy = Literal["ended", "stale"]


@dataclass(frozen=True)
class MediaSignal:
    """What a LiveKit webhook tells the call: someone's media session began or ended,
    or the media room finished."""

    livekit_room: str
    kind: SignalKind
    identity: str = ""
    # When the ended media session began (to tell an old session from the current one).
    session_started: datetime | None = None


def _signal(event: WebhookEvent) -> MediaSignal | None:
    """The webhooks that change a call; None for every other one."""
    if not event.room.name:
        return None
    if event.event == "room_finished":
        return MediaSignal(event.room.name, "room_finished")
    # Not room_started: we never create rooms, so LiveKit starts one only for a join,
    # whose participant_joined says the same; handling both cost a transaction more per
    # call with media.
    if event.event == "participant_joined":
        return MediaSignal(event.room.name, "joined", identity=event.participant.identity)
    if event.event != "participant_left":
        return None
    # A second connection of the same user replaces the first: not a departure.
    if event.participant.disconnect_reason == models.DisconnectReason.DUPLICATE_IDENTITY:
        return None
    started_ms = event.participant.joined_at_ms or event.participant.joined_at * 1000
    return MediaSignal(
        event.room.name,
        "left",
        identity=event.participant.identity,
        session_started=datetime.fromtimestamp(started_ms / 1000, UTC) if started_ms else None,
    )


def remaining_sources(permission: models.ParticipantPermission) -> list[models.TrackSource]:
    """The sources a participant may publish now (LiveKit: no sources listed with
    can_publish means all of them)."""
    if not permission.can_publish:
        return []
    return list(permission.can_publish_sources) or [
        models.TrackSource.MICROPHONE,
        models.TrackSource.CAMERA,
        models.TrackSource.SCREEN_SHARE,
        models.TrackSource.SCREEN_SHARE_AUDIO,
    ]


class Media:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._receiver = api.WebhookReceiver(
            api.TokenVerifier(settings.LIVEKIT_API_KEY, settings.LIVEKIT_API_SECRET)
        )
        self._api: api.LiveKitAPI | None = None

    def token(
        self, *, livekit_room: str, user_id: str, call_type: str, muted: Iterable[str] = ()
    ) -> str:
        """Join grant for exactly one room; identity is the user id; 600 s TTL; an audio
        call may publish the microphone only, and a muted kind nothing of its sources."""
        taken = _taken(muted)
        sources = [source for source in PUBLISH_SOURCES[call_type] if source not in taken]
        grants = api.VideoGrants(
            room_join=True,
            room=livekit_room,
            # An empty list means every source to LiveKit: nothing left means no publishing.
            can_publish=bool(sources),
            can_subscribe=True,
            can_publish_data=True,
            can_publish_sources=sources,
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

    async def occupied_rooms(self) -> dict[str, int] | None:
        """Every media room and how many are in it; None when LiveKit cannot say."""
        try:
            reply = await asyncio.wait_for(
                self._client().room.list_rooms(api.ListRoomsRequest()),
                self.settings.LIVEKIT_API_TIMEOUT_SECONDS,
            )
        except (api.TwirpError, TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("livekit list_rooms failed", extra=log_fields(error=type(err).__name__))
            return None
        return {room.name: room.num_participants for room in reply.rooms}

    async def mute(self, livekit_room: str, user_id: str, muted: Iterable[str]) -> None:
        """Takes away the user's permission to publish the muted kinds of track: LiveKit
        removes the tracks published and refuses new ones, so the client cannot undo it (a
        MutePublishedTrack was a mute the client could lift). It holds for this media
        connection; the call keeps the mutes for the next ones (domain.mute). Raises
        UNAVAILABLE when LiveKit cannot be reached."""
        taken = {models.TrackSource.Value(source.upper()) for source in _taken(muted)}
        client = self._client().room
        identity = api.RoomParticipantIdentity(room=livekit_room, identity=user_id)
        try:
            info = await asyncio.wait_for(
                client.get_participant(identity), self.settings.LIVEKIT_API_TIMEOUT_SECONDS
            )
            permission = models.ParticipantPermission()
            permission.CopyFrom(info.permission)
            allowed = [source for source in remaining_sources(permission) if source not in taken]
            del permission.can_publish_sources[:]
            permission.can_publish_sources.extend(allowed)
            # An empty list means every source to LiveKit: nothing left means no publishing.
            permission.can_publish = bool(allowed)
            await asyncio.wait_for(
                client.update_participant(
                    api.UpdateParticipantRequest(
                        room=livekit_room, identity=user_id, permission=permission
                    )
                ),
                self.settings.LIVEKIT_API_TIMEOUT_SECONDS,
            )
        except api.TwirpError as err:
            if err.code == "not_found":  # not connected to the media now: nothing to mute
                return
            log.warning("livekit mute failed", extra=log_fields(code=err.code))
            raise UNAVAILABLE from None
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("livekit unreachable", extra=log_fields(error=type(err).__name__))
            raise UNAVAILABLE from None

    async def _call(self, what: str, request: Awaitable[object]) -> bool:
        """A best-effort RoomService call: True when done (or nothing was there to act
        on), False (logged) when LiveKit could not do it now."""
        try:
            await asyncio.wait_for(request, self.settings.LIVEKIT_API_TIMEOUT_SECONDS)
            return True
        except api.TwirpError as err:
            if err.code == "not_found":
                return True
            log.warning("livekit call failed", extra=log_fields(call=what, code=err.code))
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("livekit unreachable", extra=log_fields(error=type(err).__name__))
        return False

    async def delete_room(self, livekit_room: str, why: DeleteWhy) -> bool:
        """True when the room is gone (deleted now or never existed)."""
        ROOM_DELETIONS.labels(why).inc()
        request = api.DeleteRoomRequest(room=livekit_room)
        return await self._call("delete_room", self._client().room.delete_room(request))

    async def remove_participant(self, livekit_room: str, user_id: str) -> bool:
        """True when the participant is out of the room (removed now, or not there)."""
        request = api.RoomParticipantIdentity(room=livekit_room, identity=user_id)
        return await self._call(
            "remove_participant", self._client().room.remove_participant(request)
        )

    async def present(self, livekit_room: str) -> list[str] | None:
        """The identities in a media room now; None when LiveKit cannot say."""
        request = api.ListParticipantsRequest(room=livekit_room)
        try:
            reply = await asyncio.wait_for(
                self._client().room.list_participants(request),
                self.settings.LIVEKIT_API_TIMEOUT_SECONDS,
            )
        except api.TwirpError as err:
            if err.code == "not_found":
                return []
            log.warning("livekit list_participants failed", extra=log_fields(code=err.code))
            return None
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            log.warning("livekit unreachable", extra=log_fields(error=type(err).__name__))
            return None
        return [p.identity for p in reply.participants]

    async def close(self) -> None:
        if self._api is not None:
            await self._api.aclose()
