"""CallService: the gRPC face of the call transitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import grpc
from google.protobuf import empty_pb2
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.calls import call_log, domain, store, sweeps
from services.calls.convert import timestamp
from services.calls.domain import (
    RING_AGAIN_MAX,
    Actor,
    Call,
    CallPolicy,
    CallRef,
    Change,
    MuteKind,
    RoomRef,
)
from services.calls.effects import CallEffects
from services.calls.media import Media
from services.calls.transitions import Applied, CallTransitions
from services.common import validation
from services.common.auth import LINK_TOKEN_PREFIX, GuestTokens, Kind, Policy, current_principal
from services.common.db import open_pool
from services.common.errors import invalid, unauthenticated
from services.common.rate_limit import spend_public_budget
from services.common.server import Registration, ServiceParts
from services.common.settings import Settings
from services.events.relay import relay_jobs

POLICIES = {
    "GetActiveCall": Policy.SESSION,
    "StartCall": Policy.SESSION,
    "AcceptCall": Policy.JOIN,  # a session, this call's ring token or guest session
    "DeclineCall": Policy.ANSWER,
    "EndCall": Policy.ANY,  # the API key ends any call as ended_by_host
    "LeaveCall": Policy.IN_CALL,  # a session, or this call's guest session
    "RefreshToken": Policy.IN_CALL,
    "ListRingingCalls": Policy.SESSION,
    "RingCall": Policy.SESSION,
    "RemoveParticipant": Policy.ANY,  # a group call's creator, or the API key
    "MuteParticipant": Policy.ANY,
    "CreateCallLink": Policy.ANY,  # the call's creator, or the API key
    "ListCallLinks": Policy.ANY,
    "RevokeCallLink": Policy.ANY,
    "CreateGuest": Policy.PUBLIC,  # the link token (gl_...) is checked by the handler
    "AdmitGuest": Policy.ANY,  # the call's creator, a side of a 1:1 call, or the API key
    "DenyGuest": Policy.ANY,
    "HandleLivekitWebhook": Policy.PUBLIC,  # LiveKit's signature is checked by the handler
}

GUEST_NAME_MAX = 64


# A rule of a transition by an app user: the call, the user, the policy, the time.
CallerRule = Callable[[Call, str, CallPolicy, datetime], Change]


def _room(request: Any) -> tuple[RoomRef, str]:
    """The room a request names and the app user who asks."""
    principal = current_principal()
    room = RoomRef(principal.tenant_id, validation.resource_id(request.room_id, "roomId"))
    return room, principal.require_user()


def _call(request: Any) -> CallRef:
    principal = current_principal()
    ref = CallRef(
        principal.tenant_id,
        validation.resource_id(request.room_id, "roomId"),
        validation.resource_id(request.call_id, "callId"),
    )
    if principal.kind in (Kind.RING, Kind.GUEST) and ref.call != principal.call_id:
        # A ring token or a guest session acts in the one call it names: anything else,
        # as if it were absent.
        raise unauthenticated("this token is for another call")
    return ref


def _caller(request: Any) -> tuple[CallRef, str]:
    """The call a request names and the app user who asks (a session or a ring token)."""
    ref = _call(request)
    return ref, current_principal().require_user()


def _moderation(request: Any) -> tuple[CallRef, Actor]:
    """The call a moderation request names, and who asks: an app user or the tenant."""
    principal = current_principal()
    return _call(request), Actor(principal.user_id if principal.kind is Kind.SESSION else None)


def _on_participant(request: Any) -> tuple[CallRef, Actor, str]:
    """A moderation request about one participant: the call, who asks, and whom."""
    ref, actor = _moderation(request)
    return ref, actor, validation.participant_id(request.user_id)


def _on_guest(request: Any) -> tuple[CallRef, Actor, str]:
    """A request about one guest (by guest id): the call, who asks, and the guest."""
    ref, actor = _moderation(request)
    return ref, actor, domain.guest_user_id(validation.resource_id(request.guest_id, "guestId"))


def _link(link: store.Link) -> pb.CallLink:
    return pb.CallLink(
        id=link.id, expires_at=timestamp(link.expires_at), max_uses=link.max_uses, uses=link.uses
    )


class CallService(pb_grpc.CallServiceServicer):
    def __init__(self, calls: CallTransitions, media: Media, settings: Settings) -> None:
        self.calls = calls
        self.media = media
        self.settings = settings
        self.guest_tokens = GuestTokens(settings.SESSION_SIGNING_KEY)

    def _livekit(self, applied: Applied, user_id: str) -> pb.LiveKitCredentials:
        call = applied.call
        return pb.LiveKitCredentials(
            url=self.settings.LIVEKIT_PUBLIC_URL,
            token=self.media.token(
                livekit_room=call.livekit_room,
                user_id=user_id,
                call_type=call.type,
                muted=call.muted(user_id),
            ),
        )

    async def _by_caller(self, request: Any, rule: CallerRule) -> tuple[Applied, str]:
        """A transition of the call the request names by the app user who asks."""
        ref, user = _caller(request)
        by_ring_token = current_principal().kind is Kind.RING

        def apply(call: Call, policy: CallPolicy, now: datetime) -> Change:
            if by_ring_token:  # checked in the transaction, against the call's state
                domain.require_ringing(call, user, now)
            return rule(call, user, policy, now)

        return await self.calls.on_call(ref, user, apply), user

    async def GetActiveCall(
        self, request: pb.GetActiveCallRequest, context: Any
    ) -> pb.GetActiveCallResponse:
        applied = await self.calls.active(*_room(request))
        return pb.GetActiveCallResponse(call=applied.message if applied else None)

    async def StartCall(self, request: pb.StartCallRequest, context: Any) -> pb.StartCallResponse:
        room, user = _room(request)
        call_type = validation.call_type(request.type) if request.HasField("type") else None
        custom = validation.custom_data(request.custom) if request.HasField("custom") else None
        applied = await self.calls.start(room, user, call_type, custom)
        if not applied.call.live:  # over as it began (busy): nothing to join
            return pb.StartCallResponse(call=applied.message)
        return pb.StartCallResponse(call=applied.message, livekit=self._livekit(applied, user))

    async def AcceptCall(
        self, request: pb.AcceptCallRequest, context: Any
    ) -> pb.AcceptCallResponse:
        applied, user = await self._by_caller(request, domain.accept)
        return pb.AcceptCallResponse(call=applied.message, livekit=self._livekit(applied, user))

    async def DeclineCall(
        self, request: pb.DeclineCallRequest, context: Any
    ) -> pb.DeclineCallResponse:
        applied, _ = await self._by_caller(request, lambda c, u, _, now: domain.decline(c, u, now))
        return pb.DeclineCallResponse(call=applied.message)

    async def EndCall(self, request: pb.EndCallRequest, context: Any) -> pb.EndCallResponse:
        ref, actor = _moderation(request)
        user = actor.user_id
        if user is None:  # the tenant ends a call even while its calls are disabled
            applied = await self.calls.on_call(
                ref, None, lambda call, _, now: domain.end_by_host(call, now), enabled=False
            )
        else:
            reason = domain.end_reason(request.reason if request.HasField("reason") else None)
            applied = await self.calls.on_call(
                ref, user, lambda call, _, now: domain.end(call, user, reason, now)
            )
        return pb.EndCallResponse(call=applied.message)

    async def ListRingingCalls(
        self, request: pb.ListRingingCallsRequest, context: Any
    ) -> pb.ListRingingCallsResponse:
        principal = current_principal()
        found = await self.calls.ringing(tenant=principal.tenant_id, user=principal.require_user())
        return pb.ListRingingCallsResponse(calls=[a.message for a in found])

    async def RingCall(self, request: pb.RingCallRequest, context: Any) -> pb.RingCallResponse:
        ref, user = _caller(request)
        targets = validation.user_ids(request.user_ids, "userIds", most=RING_AGAIN_MAX)
        applied = await self.calls.ring_again(ref, user, targets)
        return pb.RingCallResponse(call=applied.message)

    async def RemoveParticipant(
        self, request: pb.RemoveParticipantRequest, context: Any
    ) -> pb.RemoveParticipantResponse:
        ref, actor, target = _on_participant(request)
        applied = await self.calls.on_call(
            ref, actor.user_id, lambda call, _, now: domain.remove(call, actor, target, now)
        )
        return pb.RemoveParticipantResponse(call=applied.message)

    async def MuteParticipant(
        self, request: pb.MuteParticipantRequest, context: Any
    ) -> pb.MuteParticipantResponse:
        ref, actor, target = _on_participant(request)
        kind = cast(MuteKind, validation.one_of(request.kind, "kind", ("audio", "video")))
        applied = await self.calls.mute(ref, actor, target, kind)
        return pb.MuteParticipantResponse(call=applied.message)

    async def LeaveCall(self, request: pb.LeaveCallRequest, context: Any) -> pb.LeaveCallResponse:
        applied, _ = await self._by_caller(request, lambda c, u, _, now: domain.leave(c, u, now))
        return pb.LeaveCallResponse(call=applied.message)

    async def RefreshToken(
        self, request: pb.RefreshTokenRequest, context: Any
    ) -> pb.RefreshTokenResponse:
        ref, user = _caller(request)
        applied = await self.calls.token_holder(ref, user)
        return pb.RefreshTokenResponse(call=applied.message, livekit=self._livekit(applied, user))

    async def CreateCallLink(
        self, request: pb.CreateCallLinkRequest, context: Any
    ) -> pb.CreateCallLinkResponse:
        ref, actor = _moderation(request)
        ttl = validation.int_range(
            request.ttl_seconds if request.HasField("ttl_seconds") else 86400,
            "ttlSeconds",
            60,
            604800,
        )
        uses = validation.int_range(
            request.max_uses if request.HasField("max_uses") else 100, "maxUses", 1, 1000
        )
        link, token = await self.calls.make_link(ref, actor, ttl=ttl, max_uses=uses)
        return pb.CreateCallLinkResponse(link=_link(link), token=token)

    async def ListCallLinks(
        self, request: pb.ListCallLinksRequest, context: Any
    ) -> pb.ListCallLinksResponse:
        ref, actor = _moderation(request)
        return pb.ListCallLinksResponse(
            links=[_link(link) for link in await self.calls.links(ref, actor)]
        )

    async def RevokeCallLink(
        self, request: pb.RevokeCallLinkRequest, context: Any
    ) -> pb.RevokeCallLinkResponse:
        ref, actor = _moderation(request)
        await self.calls.revoke_link(ref, actor, validation.resource_id(request.link_id, "linkId"))
        return pb.RevokeCallLinkResponse()

    async def CreateGuest(
        self, request: pb.CreateGuestRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateGuestResponse:
        """A guest knocks with a call link, presented as the bearer token."""
        spend_public_budget()  # every knock (each link has a rate of its own too)
        metadata = dict(context.invocation_metadata() or ())
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(LINK_TOKEN_PREFIX):
            raise unauthenticated("a guest knocks with a call link: Bearer gl_...")
        name = request.name.strip()
        if not 1 <= len(name) <= GUEST_NAME_MAX:
            raise invalid("name", f"must be 1 to {GUEST_NAME_MAX} characters")
        applied, guest, until = await self.calls.knock(token.strip(), name)
        call = applied.call
        session = self.guest_tokens.mint(
            tenant_id=call.tenant_id,
            call_id=call.id,
            user_id=guest,
            expires_at=int(until.timestamp()),
        )
        return pb.CreateGuestResponse(
            guest_id=guest.removeprefix(domain.GUEST_PREFIX),
            token=session,
            expires_at=timestamp(until),
            call=applied.message,
        )

    async def AdmitGuest(
        self, request: pb.AdmitGuestRequest, context: Any
    ) -> pb.AdmitGuestResponse:
        return pb.AdmitGuestResponse(call=await self._answer_knock(request, admit=True))

    async def DenyGuest(self, request: pb.DenyGuestRequest, context: Any) -> pb.DenyGuestResponse:
        return pb.DenyGuestResponse(call=await self._answer_knock(request, admit=False))

    async def _answer_knock(
        self, request: pb.AdmitGuestRequest | pb.DenyGuestRequest, *, admit: bool
    ) -> pb.Call:
        """A host lets a waiting guest in (`admit`) or turns them away."""
        ref, actor, guest = _on_guest(request)

        def rule(call: Call, policy: CallPolicy, _: datetime) -> Change:
            if admit:
                return domain.admit(call, actor, guest, policy)
            return domain.deny(call, actor, guest)

        return (await self.calls.on_call(ref, actor.user_id, rule)).message

    async def HandleLivekitWebhook(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        metadata = dict(context.invocation_metadata() or ())
        authorization = metadata.get("authorization")
        signal = self.media.webhook_signal(
            request.data, authorization if isinstance(authorization, str) else None
        )
        spend_public_budget()  # after the signature: unsigned junk spends none of it
        if signal is not None:
            await self.calls.media_signal(signal)
        return empty_pb2.Empty()


async def build(settings: Settings, engine: AsyncEngine) -> ServiceParts:
    media = Media(settings)
    pool = await open_pool(settings, settings.DB_POOL_SIZE, min_size=2)
    effects = CallEffects(media, pool)
    calls = CallTransitions.for_settings(pool, effects, settings)
    relay = relay_jobs(settings)  # the outbox relay runs in every calls replica
    servicer = CallService(calls, media, settings)
    log, close_log = await call_log.registration(settings)  # GET /v1/calls, /v1/usage

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
        await sweeps.every(5.0, effects.retry_room_deletions)

    async def close() -> None:
        await effects.drain()
        await media.close()
        await pool.close()

    name = pb.DESCRIPTOR.services_by_name["CallService"].full_name
    return ServiceParts(
        registrations=[Registration(add, name, POLICIES), log],
        background=[
            ring_timeouts,
            silent_calls,
            reconcile,
            effects.delete_ended_rooms,
            media_cleanup,
            *relay.background,
        ],
        closers=[close, relay.close, close_log],
    )
