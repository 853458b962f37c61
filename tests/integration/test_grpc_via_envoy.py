"""Internal services over gRPC, through Envoy's REST port (h2c), with stubs compiled from
proto/ (shared/DESIGN.md, "Internal services over gRPC"): the same credentials and errors
as REST, and every front-door guard that is not about JSON answered as a gRPC status
(one ErrorInfo in grpc-status-details-bin), never as an HTTP/JSON body."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from sendsar.calls.v1 import call_log_pb2, call_log_pb2_grpc, calls_pb2, calls_pb2_grpc
from sendsar.chat.v1 import chat_pb2, chat_pb2_grpc
from sendsar.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from tests.conftest import Tenant
from tests.integration.fronts import Front, front
from tests.stack import Stack

MIB = 1 << 20


def _address(rest: str) -> str:
    return rest.removeprefix("http://")


@contextmanager
def _channel(rest: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(_address(rest)) as channel:
        yield channel


def _auth(credential: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {credential}")]


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of a gRPC error, decoded as an internal service would."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no grpc-status-details-bin: {err!r}"
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, status
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    return info


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    assert isinstance(err, grpc.RpcError)
    return err


def _stubs(channel: grpc.Channel) -> tuple[Any, Any, Any]:
    return (
        tenant_pb2_grpc.TenantServiceStub(channel),
        chat_pb2_grpc.ChatServiceStub(channel),
        calls_pb2_grpc.CallServiceStub(channel),
    )


def test_every_service_answers_grpc_through_envoy(tenant: Tenant) -> None:
    with _channel(tenant.rest) as channel:
        tenants, chat, calls = _stubs(channel)
        key = _auth(tenant.api_key)
        alice = tenants.CreateSession(
            tenant_pb2.CreateSessionRequest(user_id="alice"), metadata=key
        )
        bob = tenants.CreateSession(tenant_pb2.CreateSessionRequest(user_id="bob"), metadata=key)
        settings = tenants.GetSettings(tenant_pb2.GetSettingsRequest(), metadata=_auth(alice.token))
        assert settings.calls.enabled

        room = chat.CreateRoom(chat_pb2.CreateRoomRequest(members=["alice", "bob"]), metadata=key)
        text = chat_pb2.Part(type="text", text="hello over gRPC")
        message = chat.PostMessage(
            chat_pb2.PostMessageRequest(room_id=room.id, parts=[text]), metadata=_auth(alice.token)
        )
        assert message.sender_id == "alice"

        started = calls.StartCall(
            calls_pb2.StartCallRequest(room_id=room.id, type="audio"), metadata=_auth(alice.token)
        )
        assert started.call.status == "ringing"
        accepted = calls.AcceptCall(
            calls_pb2.AcceptCallRequest(room_id=room.id, call_id=started.call.id),
            metadata=_auth(bob.token),
        )
        assert accepted.call.status == "active" and accepted.livekit.token
        ended = calls.EndCall(
            calls_pb2.EndCallRequest(room_id=room.id, call_id=started.call.id),
            metadata=_auth(alice.token),
        )
        assert ended.call.status == "ended"
        assert ended.call.end_reason == calls_pb2.Call.EndReason.hangup

        log = call_log_pb2_grpc.CallLogServiceStub(channel)
        listed = log.ListCalls(call_log_pb2.ListCallsRequest(room_id=room.id), metadata=key)
        assert [c.id for c in listed.calls] == [started.call.id]
    # The same state REST sees.
    with tenant.user("bob") as rest_bob:
        reply = rest_bob.get(f"/chat/rooms/{room.id}/messages")
        assert message.id in [m["id"] for m in reply.json()["messages"]]


def test_error_info_reasons_arrive_as_from_the_services(tenant: Tenant) -> None:
    room = tenant.room("alice", "bob")
    mallory = tenant.session_token("mallory")
    alice = tenant.session_token("alice")
    with _channel(tenant.rest) as channel:
        tenants, chat, calls = _stubs(channel)
        err = failure(
            lambda: calls.StartCall(
                calls_pb2.StartCallRequest(room_id=room), metadata=_auth(mallory)
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err).reason == "NOT_ROOM_MEMBER"
        text = chat_pb2.Part(type="text", text="hi")
        err = failure(
            lambda: chat.PostMessage(
                chat_pb2.PostMessageRequest(room_id=room, parts=[text]), metadata=_auth(mallory)
            )
        )
        assert (err.code(), error_info(err).reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_ROOM_MEMBER",
        )
        err = failure(
            lambda: tenants.UpdateSettings(
                tenant_pb2.UpdateSettingsRequest(), metadata=_auth(alice)
            )
        )
        assert (err.code(), error_info(err).reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "API_KEY_REQUIRED",
        )
        err = failure(
            lambda: tenants.CreateSession(
                tenant_pb2.CreateSessionRequest(user_id="no spaces"), metadata=_auth(tenant.api_key)
            )
        )
        assert (err.code(), error_info(err).reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )


def _one_call_per_service(channel: grpc.Channel, size: int = 0) -> list[Callable[..., Any]]:
    """A unary call on each service, its request carrying `size` characters of payload."""
    tenants, chat, calls = _stubs(channel)
    filler = "x" * size
    room = "rm_" + "0" * 32
    return [
        lambda **kw: tenants.CreateSession(
            tenant_pb2.CreateSessionRequest(user_id="alice", name=filler), **kw
        ),
        lambda **kw: chat.CreateRoom(chat_pb2.CreateRoomRequest(members=["a", filler]), **kw),
        lambda **kw: calls.StartCall(
            calls_pb2.StartCallRequest(room_id=room, type=filler or "audio"), **kw
        ),
    ]


def test_missing_or_bad_credentials_are_unauthenticated_on_every_service(stack: Stack) -> None:
    with _channel(stack.rest) as channel:
        for call in _one_call_per_service(channel):
            for metadata in (None, _auth("sk_0123456789abcdef_forged"), _auth("not-a-jwt")):
                err = failure(lambda: call(metadata=metadata))  # noqa: B023
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
                assert error_info(err).reason == "UNAUTHENTICATED"


def test_an_oversize_message_is_resource_exhausted_on_every_service(tenant: Tenant) -> None:
    """Envoy's 1 MiB body limit answers gRPC as a gRPC server would: RESOURCE_EXHAUSTED."""
    with _channel(tenant.rest) as channel:
        for call in _one_call_per_service(channel, size=2 * MIB):
            err = failure(lambda: call(metadata=_auth(tenant.api_key)))  # noqa: B023
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            info = error_info(err)
            assert (info.reason, info.domain) == ("PAYLOAD_TOO_LARGE", "calls.sendsar.dev")
            assert err.details() == "The request body is larger than 1 MiB."


def test_a_method_nobody_serves_is_unimplemented(tenant: Tenant) -> None:
    with _channel(tenant.rest) as channel:
        for path in ("/sendsar.tenant.v1.TenantService/NoSuchMethod", "/no.such.v1.Service/Call"):
            call = channel.unary_unary(path)
            err = failure(lambda: call(b"", metadata=_auth(tenant.api_key)))  # noqa: B023
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED, (path, err)
    # Envoy's own answer (no route) carries the usual ErrorInfo too.
    assert error_info(err).reason == "NOT_FOUND"


def _get_settings(rest: str, tenant: Tenant, calls: int) -> tuple[list[Any], grpc.RpcError]:
    """`calls` GetSettings with the API key: each one's code, and the last error."""
    codes: list[Any] = []
    last: grpc.RpcError | None = None
    with _channel(rest) as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        for _ in range(calls):
            try:
                tenants.GetSettings(tenant_pb2.GetSettingsRequest(), metadata=_auth(tenant.api_key))
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
                last = err
    assert last is not None, codes
    return codes, last


@pytest.fixture(scope="module")
def address_limited(stack: Stack) -> Iterator[Front]:
    """An Envoy of its own in front of the stack's services, 3 requests a second per
    client address (burst 6)."""
    with front(stack, "grpc-address-limited", (), envoy_options={"rate_limit_per_second": 3}) as f:
        yield f


def test_envoys_per_address_limit_is_resource_exhausted(
    address_limited: Front, tenant: Tenant
) -> None:
    codes, last = _get_settings(address_limited.rest, tenant, 12)
    assert codes[:4] == [grpc.StatusCode.OK] * 4, codes
    assert codes[-3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, codes
    info = error_info(last)
    assert (info.reason, dict(info.metadata)) == ("RATE_LIMITED", {"scope": "address"})


@pytest.fixture(scope="module")
def credential_limited(stack: Stack) -> Iterator[Front]:
    """A tenant service replica whose per-credential bucket holds 3 requests."""
    with front(
        stack,
        "grpc-credential-limited",
        ("tenant",),
        RATE_LIMIT_CREDENTIAL_PER_SECOND="0.2",
        RATE_LIMIT_CREDENTIAL_BURST="3",
    ) as f:
        yield f


def test_a_services_rate_limit_is_resource_exhausted(
    credential_limited: Front, tenant: Tenant
) -> None:
    codes, last = _get_settings(credential_limited.rest, tenant, 4)
    assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED], codes
    info = error_info(last)
    assert (info.reason, dict(info.metadata)) == ("RATE_LIMITED", {"scope": "credential"})


def test_server_reflection_describes_the_whole_api_through_envoy(stack: Stack) -> None:
    with _channel(stack.rest) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "sendsar.tenant.v1.TenantService",
            "sendsar.chat.v1.ChatService",
            "sendsar.calls.v1.CallService",
            "sendsar.calls.v1.CallLogService",
        } <= services
        found = database.FindFileContainingSymbol("sendsar.calls.v1.CallService")
        assert isinstance(found, descriptor_pb2.FileDescriptorProto)
        assert "StartCall" in {m.name for m in found.service[0].method}
        log = database.FindFileContainingSymbol("sendsar.calls.v1.CallLogService")
        assert "ListCalls" in {m.name for m in log.service[0].method}
