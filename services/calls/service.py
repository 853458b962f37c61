"""CallService: the gRPC face of the call state machine."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import empty_pb2
from livekit.protocol import models
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls.convert import call_to_pb
from services.calls.machine import CallMachine
from services.calls.media import Media
from services.calls.store import Snapshot
from services.common import validation
from services.common.auth import Policy, current_principal
from services.common.server import Registration, ServiceParts
from services.common.settings import Settings
from services.events.relay import relay_jobs

POLICIES = {
    "GetActiveCall": Policy.SESSION,
    "StartCall": Policy.SESSION,
    "AcceptCall": Policy.SESSION,
    "DeclineCall": Policy.SESSION,
    "EndCall": Policy.SESSION,
    "LeaveCall": Policy.SESSION,
    "RefreshToken": Policy.SESSION,
    "HandleLivekitWebhook": Policy.PUBLIC,  # LiveKit's signature is checked by the handler
}

MEDIA_EVENTS = ("participant_left", "room_finished")


def _caller(request: Any, with_call: bool = True) -> dict[str, str]:
    principal = current_principal()
    ids = {
        "tenant_id": principal.tenant_id,
        "user_id": principal.require_user(),
        "room_id": validation.resource_id(request.room_id, "roomId"),
    }
    if with_call:
        ids["call_id"] = validation.resource_id(request.call_id, "callId")
    return ids


class CallService(pb_grpc.CallServiceServicer):
    def __init__(self, machine: CallMachine, media: Media, settings: Settings) -> None:
        self.machine = machine
        self.media = media
        self.settings = settings

    def _livekit(self, snap: Snapshot, user_id: str) -> pb.LiveKitCredentials:
        return pb.LiveKitCredentials(
            url=self.settings.LIVEKIT_PUBLIC_URL,
            token=self.media.token(livekit_room=snap.call.livekit_room, user_id=user_id),
        )

    async def GetActiveCall(
        self, request: pb.GetActiveCallRequest, context: Any
    ) -> pb.GetActiveCallResponse:
        snap = await self.machine.active(**_caller(request, with_call=False))
        return (
            pb.GetActiveCallResponse(call=call_to_pb(snap)) if snap else pb.GetActiveCallResponse()
        )

    async def StartCall(self, request: pb.StartCallRequest, context: Any) -> pb.StartCallResponse:
        ids = _caller(request, with_call=False)
        call_type = validation.call_type(request.type) if request.HasField("type") else None
        snap = await self.machine.start(**ids, call_type=call_type)
        return pb.StartCallResponse(
            call=call_to_pb(snap), livekit=self._livekit(snap, ids["user_id"])
        )

    async def AcceptCall(
        self, request: pb.AcceptCallRequest, context: Any
    ) -> pb.AcceptCallResponse:
        ids = _caller(request)
        snap = await self.machine.accept(**ids)
        return pb.AcceptCallResponse(
            call=call_to_pb(snap), livekit=self._livekit(snap, ids["user_id"])
        )

    async def DeclineCall(
        self, request: pb.DeclineCallRequest, context: Any
    ) -> pb.DeclineCallResponse:
        snap = await self.machine.decline(**_caller(request))
        return pb.DeclineCallResponse(call=call_to_pb(snap))

    async def EndCall(self, request: pb.EndCallRequest, context: Any) -> pb.EndCallResponse:
        reason = request.reason if request.HasField("reason") else None
        snap = await self.machine.end(**_caller(request), reason=reason)
        return pb.EndCallResponse(call=call_to_pb(snap))

    async def LeaveCall(self, request: pb.LeaveCallRequest, context: Any) -> pb.LeaveCallResponse:
        snap = await self.machine.leave(**_caller(request))
        return pb.LeaveCallResponse(call=call_to_pb(snap))

    async def RefreshToken(
        self, request: pb.RefreshTokenRequest, context: Any
    ) -> pb.RefreshTokenResponse:
        ids = _caller(request)
        snap = await self.machine.token_check(**ids)
        return pb.RefreshTokenResponse(
            call=call_to_pb(snap), livekit=self._livekit(snap, ids["user_id"])
        )

    async def HandleLivekitWebhook(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        event = self.media.verify_webhook(
            request.data, authorization if isinstance(authorization, str) else None
        )
        # A second connection of the same user replaces the first: not a departure.
        replaced = event.participant.disconnect_reason == models.DisconnectReason.DUPLICATE_IDENTITY
        if event.event in MEDIA_EVENTS and event.room.name and not replaced:
            session_ms = event.participant.joined_at_ms or event.participant.joined_at * 1000
            await self.machine.media_event(
                event.event, event.room.name, event.participant.identity, session_ms
            )
        return empty_pb2.Empty()


async def _every(seconds: float, job: Any) -> None:
    while True:
        await job()
        await asyncio.sleep(seconds)


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    media = Media(settings)
    machine = CallMachine(engine, media)
    relay = relay_jobs(settings)  # the outbox relay runs in every calls replica
    servicer = CallService(machine, media, settings)

    def add(server: grpc.aio.Server) -> None:
        pb_grpc.add_CallServiceServicer_to_server(servicer, server)

    async def ring_timeouts() -> None:
        await _every(settings.RING_SWEEP_INTERVAL_SECONDS, machine.expire_ringing)

    async def media_cleanup() -> None:
        await _every(5.0, machine.clean_media_rooms)

    async def close() -> None:
        await machine.drain()
        await media.close()

    name = pb.DESCRIPTOR.services_by_name["CallService"].full_name
    return ServiceParts(
        registrations=[Registration(add, name, POLICIES)],
        background=[ring_timeouts, media_cleanup, *relay.background],
        closers=[close, relay.close],
    )
