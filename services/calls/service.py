"""CallService: the gRPC face of the call transitions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls import sweeps
from services.calls.domain import RING_AGAIN_MAX, Actor
from services.calls.media import Media
from services.calls.transitions import Applied, CallTransitions
from services.common import validation
from services.common.auth import Kind, Policy, RingTokens, current_principal
from services.common.db import open_pool
from services.common.errors import unauthenticated
from services.common.server import Registration, ServiceParts
from services.common.settings import Settings
from services.events.relay import relay_jobs

POLICIES = {
    "GetActiveCall": Policy.SESSION,
    "StartCall": Policy.SESSION,
    "AcceptCall": Policy.ANSWER,  # a session, or the ring token of this call (VoIP push)
    "DeclineCall": Policy.ANSWER,
    "EndCall": Policy.ANY,  # the API key ends any call as ended_by_host
    "LeaveCall": Policy.SESSION,
    "RefreshToken": Policy.SESSION,
    "ListRingingCalls": Policy.SESSION,
    "RingCall": Policy.SESSION,
    "RemoveParticipant": Policy.ANY,  # a group call's creator, or the API key
    "MuteParticipant": Policy.ANY,
    "HandleLivekitWebhook": Policy.PUBLIC,  # LiveKit's signature is checked by the handler
}


def _caller(request: Any, with_call: bool = True) -> dict[str, str]:
    principal = current_principal()
    ids = {
        "tenant": principal.tenant_id,
        "user": principal.require_user(),
        "room": validation.resource_id(request.room_id, "roomId"),
    }
    if with_call:
        ids["call"] = validation.resource_id(request.call_id, "callId")
    if principal.kind is Kind.RING and ids.get("call") != principal.call_id:
        # A ring token answers the one call it names: anything else, as if it were absent.
        raise unauthenticated("this ring token is for another call")
    return ids


def _moderation(request: Any) -> tuple[dict[str, str], Actor]:
    """The call a moderation request names, and who asks: an app user or the tenant."""
    principal = current_principal()
    ids = {
        "tenant": principal.tenant_id,
        "room": validation.resource_id(request.room_id, "roomId"),
        "call": validation.resource_id(request.call_id, "callId"),
    }
    return ids, Actor(principal.user_id if principal.kind is Kind.SESSION else None)


class CallService(pb_grpc.CallServiceServicer):
    def __init__(self, calls: CallTransitions, media: Media, settings: Settings) -> None:
        self.calls = calls
        self.media = media
        self.settings = settings

    def _livekit(self, applied: Applied, user_id: str) -> pb.LiveKitCredentials:
        call = applied.call
        return pb.LiveKitCredentials(
            url=self.settings.LIVEKIT_PUBLIC_URL,
            token=self.media.token(
                livekit_room=call.livekit_room, user_id=user_id, call_type=call.type
            ),
        )

    async def GetActiveCall(
        self, request: pb.GetActiveCallRequest, context: Any
    ) -> pb.GetActiveCallResponse:
        applied = await self.calls.active(**_caller(request, with_call=False))
        return pb.GetActiveCallResponse(call=applied.message if applied else None)

    async def StartCall(self, request: pb.StartCallRequest, context: Any) -> pb.StartCallResponse:
        ids = _caller(request, with_call=False)
        call_type = validation.call_type(request.type) if request.HasField("type") else None
        custom = validation.custom_data(request.custom) if request.HasField("custom") else None
        applied = await self.calls.start(**ids, call_type=call_type, custom=custom)
        if not applied.call.live:  # over as it began (busy): nothing to join
            return pb.StartCallResponse(call=applied.message)
        return pb.StartCallResponse(
            call=applied.message, livekit=self._livekit(applied, ids["user"])
        )

    async def AcceptCall(
        self, request: pb.AcceptCallRequest, context: Any
    ) -> pb.AcceptCallResponse:
        ids = _caller(request)
        applied = await self.calls.accept(**ids)
        return pb.AcceptCallResponse(
            call=applied.message, livekit=self._livekit(applied, ids["user"])
        )

    async def DeclineCall(
        self, request: pb.DeclineCallRequest, context: Any
    ) -> pb.DeclineCallResponse:
        applied = await self.calls.decline(**_caller(request))
        return pb.DeclineCallResponse(call=applied.message)

    async def EndCall(self, request: pb.EndCallRequest, context: Any) -> pb.EndCallResponse:
        ids, actor = _moderation(request)
        if actor.host:
            applied = await self.calls.end_by_host(**ids)
        else:
            reason = request.reason if request.HasField("reason") else None
            applied = await self.calls.end(**ids, user=actor.user_id or "", reason=reason)
        return pb.EndCallResponse(call=applied.message)

    async def ListRingingCalls(
        self, request: pb.ListRingingCallsRequest, context: Any
    ) -> pb.ListRingingCallsResponse:
        principal = current_principal()
        found = await self.calls.ringing(tenant=principal.tenant_id, user=principal.require_user())
        return pb.ListRingingCallsResponse(calls=[a.message for a in found])

    async def RingCall(self, request: pb.RingCallRequest, context: Any) -> pb.RingCallResponse:
        ids = _caller(request)
        targets = validation.user_ids(request.user_ids, "userIds", most=RING_AGAIN_MAX)
        applied = await self.calls.ring_again(**ids, targets=targets)
        return pb.RingCallResponse(call=applied.message)

    async def RemoveParticipant(
        self, request: pb.RemoveParticipantRequest, context: Any
    ) -> pb.RemoveParticipantResponse:
        ids, actor = _moderation(request)
        target = validation.user_id(request.user_id)
        applied = await self.calls.remove(**ids, actor=actor, target=target)
        return pb.RemoveParticipantResponse(call=applied.message)

    async def MuteParticipant(
        self, request: pb.MuteParticipantRequest, context: Any
    ) -> pb.MuteParticipantResponse:
        ids, actor = _moderation(request)
        target = validation.user_id(request.user_id)
        kind = validation.one_of(request.kind, "kind", ("audio", "video"))
        applied = await self.calls.mute(**ids, actor=actor, target=target, kind=kind)
        return pb.MuteParticipantResponse(call=applied.message)

    async def LeaveCall(self, request: pb.LeaveCallRequest, context: Any) -> pb.LeaveCallResponse:
        applied = await self.calls.leave(**_caller(request))
        return pb.LeaveCallResponse(call=applied.message)

    async def RefreshToken(
        self, request: pb.RefreshTokenRequest, context: Any
    ) -> pb.RefreshTokenResponse:
        ids = _caller(request)
        applied = await self.calls.token_holder(**ids)
        return pb.RefreshTokenResponse(
            call=applied.message, livekit=self._livekit(applied, ids["user"])
        )

    async def HandleLivekitWebhook(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        signal = self.media.webhook_signal(
            request.data, authorization if isinstance(authorization, str) else None
        )
        if signal is not None:
            await self.calls.media_signal(signal)
        return empty_pb2.Empty()


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    media = Media(settings)
    pool = await open_pool(settings, settings.DB_POOL_SIZE, min_size=2)
    calls = CallTransitions(
        pool,
        media,
        RingTokens(settings.SESSION_SIGNING_KEY),
        timedelta(seconds=settings.CALL_MEDIA_GRACE_SECONDS),
    )
    relay = relay_jobs(settings)  # the outbox relay runs in every calls replica
    servicer = CallService(calls, media, settings)

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_CallServiceServicer_to_server(servicer, server)

    async def ring_timeouts() -> None:
        await sweeps.every(settings.RING_SWEEP_INTERVAL_SECONDS, lambda: sweeps.stop_rings(calls))

    async def silent_calls() -> None:
        await sweeps.every(1.0, lambda: sweeps.end_silent_calls(calls))

    async def reconcile() -> None:
        await sweeps.every(
            settings.CALL_RECONCILE_SECONDS, lambda: sweeps.reconcile_media(calls, media)
        )

    async def media_cleanup() -> None:
        await sweeps.every(5.0, lambda: sweeps.clean_media_rooms(calls, media))

    async def ended_rooms() -> None:
        await sweeps.remove_ended_rooms(calls, media)

    async def close() -> None:
        await calls.drain()
        await media.close()
        await pool.close()

    name = pb.DESCRIPTOR.services_by_name["CallService"].full_name
    return ServiceParts(
        registrations=[Registration(add, name, POLICIES)],
        background=[
            ring_timeouts,
            silent_calls,
            reconcile,
            ended_rooms,
            media_cleanup,
            *relay.background,
        ],
        closers=[close, relay.close],
    )
