import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import httpbody_pb2 as _httpbody_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Participant(_message.Message):
    __slots__ = ("user_id", "state", "joined_at", "left_at", "guest", "name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    LEFT_AT_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: str
    joined_at: _timestamp_pb2.Timestamp
    left_at: _timestamp_pb2.Timestamp
    guest: bool
    name: str
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[str] = ..., joined_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., left_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., guest: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("id", "room_id", "type", "mode", "status", "created_by", "created_at", "answered_at", "ended_at", "end_reason", "ring_timeout_seconds", "participants", "custom")
    class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        END_REASON_UNSPECIFIED: _ClassVar[Call.EndReason]
        hangup: _ClassVar[Call.EndReason]
        declined: _ClassVar[Call.EndReason]
        cancelled: _ClassVar[Call.EndReason]
        no_answer: _ClassVar[Call.EndReason]
        timeout: _ClassVar[Call.EndReason]
        busy: _ClassVar[Call.EndReason]
        all_left: _ClassVar[Call.EndReason]
        media_ended: _ClassVar[Call.EndReason]
        no_media: _ClassVar[Call.EndReason]
        ended_by_host: _ClassVar[Call.EndReason]
    END_REASON_UNSPECIFIED: Call.EndReason
    hangup: Call.EndReason
    declined: Call.EndReason
    cancelled: Call.EndReason
    no_answer: Call.EndReason
    timeout: Call.EndReason
    busy: Call.EndReason
    all_left: Call.EndReason
    media_ended: Call.EndReason
    no_media: Call.EndReason
    ended_by_host: Call.EndReason
    ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    RING_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    id: str
    room_id: str
    type: str
    mode: str
    status: str
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    answered_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    end_reason: Call.EndReason
    ring_timeout_seconds: int
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    custom: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., room_id: _Optional[str] = ..., type: _Optional[str] = ..., mode: _Optional[str] = ..., status: _Optional[str] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., answered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_reason: _Optional[_Union[Call.EndReason, str]] = ..., ring_timeout_seconds: _Optional[int] = ..., participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., custom: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class LiveKitCredentials(_message.Message):
    __slots__ = ("url", "token")
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    url: str
    token: str
    def __init__(self, url: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class GetActiveCallRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class GetActiveCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class StartCallRequest(_message.Message):
    __slots__ = ("room_id", "type", "custom")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    type: str
    custom: _struct_pb2.Struct
    def __init__(self, room_id: _Optional[str] = ..., type: _Optional[str] = ..., custom: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StartCallResponse(_message.Message):
    __slots__ = ("call", "livekit")
    CALL_FIELD_NUMBER: _ClassVar[int]
    LIVEKIT_FIELD_NUMBER: _ClassVar[int]
    call: Call
    livekit: LiveKitCredentials
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ..., livekit: _Optional[_Union[LiveKitCredentials, _Mapping]] = ...) -> None: ...

class AcceptCallRequest(_message.Message):
    __slots__ = ("room_id", "call_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class AcceptCallResponse(_message.Message):
    __slots__ = ("call", "livekit")
    CALL_FIELD_NUMBER: _ClassVar[int]
    LIVEKIT_FIELD_NUMBER: _ClassVar[int]
    call: Call
    livekit: LiveKitCredentials
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ..., livekit: _Optional[_Union[LiveKitCredentials, _Mapping]] = ...) -> None: ...

class DeclineCallRequest(_message.Message):
    __slots__ = ("room_id", "call_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class DeclineCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class EndCallRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "reason")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    reason: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EndCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class LeaveCallRequest(_message.Message):
    __slots__ = ("room_id", "call_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class LeaveCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class RefreshTokenRequest(_message.Message):
    __slots__ = ("room_id", "call_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class RefreshTokenResponse(_message.Message):
    __slots__ = ("call", "livekit")
    CALL_FIELD_NUMBER: _ClassVar[int]
    LIVEKIT_FIELD_NUMBER: _ClassVar[int]
    call: Call
    livekit: LiveKitCredentials
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ..., livekit: _Optional[_Union[LiveKitCredentials, _Mapping]] = ...) -> None: ...

class RemoveParticipantRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "user_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    user_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveParticipantResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class MuteParticipantRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "user_id", "kind")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    user_id: str
    kind: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., user_id: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class MuteParticipantResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class ListRingingCallsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRingingCallsResponse(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ...) -> None: ...

class RingCallRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "user_ids")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RingCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class CallLink(_message.Message):
    __slots__ = ("id", "expires_at", "max_uses", "uses")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    id: str
    expires_at: _timestamp_pb2.Timestamp
    max_uses: int
    uses: int
    def __init__(self, id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ...) -> None: ...

class CreateCallLinkRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "ttl_seconds", "max_uses")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    ttl_seconds: int
    max_uses: int
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., max_uses: _Optional[int] = ...) -> None: ...

class CreateCallLinkResponse(_message.Message):
    __slots__ = ("link", "token")
    LINK_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    link: CallLink
    token: str
    def __init__(self, link: _Optional[_Union[CallLink, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListCallLinksRequest(_message.Message):
    __slots__ = ("room_id", "call_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class ListCallLinksResponse(_message.Message):
    __slots__ = ("links",)
    LINKS_FIELD_NUMBER: _ClassVar[int]
    links: _containers.RepeatedCompositeFieldContainer[CallLink]
    def __init__(self, links: _Optional[_Iterable[_Union[CallLink, _Mapping]]] = ...) -> None: ...

class RevokeCallLinkRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "link_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    link_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., link_id: _Optional[str] = ...) -> None: ...

class RevokeCallLinkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateGuestRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateGuestResponse(_message.Message):
    __slots__ = ("guest_id", "token", "expires_at", "call")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    token: str
    expires_at: _timestamp_pb2.Timestamp
    call: Call
    def __init__(self, guest_id: _Optional[str] = ..., token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class AdmitGuestRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "guest_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    guest_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., guest_id: _Optional[str] = ...) -> None: ...

class AdmitGuestResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class DenyGuestRequest(_message.Message):
    __slots__ = ("room_id", "call_id", "guest_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    call_id: str
    guest_id: str
    def __init__(self, room_id: _Optional[str] = ..., call_id: _Optional[str] = ..., guest_id: _Optional[str] = ...) -> None: ...

class DenyGuestResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: Call
    def __init__(self, call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...
