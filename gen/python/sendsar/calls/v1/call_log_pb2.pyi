from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from sendsar.calls.v1 import calls_pb2 as _calls_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListCallsRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "status", "end_reason", "start_time", "end_time", "page_size", "page_token")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    status: str
    end_reason: str
    start_time: str
    end_time: str
    page_size: int
    page_token: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., status: _Optional[str] = ..., end_reason: _Optional[str] = ..., start_time: _Optional[str] = ..., end_time: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCallsResponse(_message.Message):
    __slots__ = ("calls", "next_page_token")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[_calls_pb2.Call]
    next_page_token: str
    def __init__(self, calls: _Optional[_Iterable[_Union[_calls_pb2.Call, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class GetCallResponse(_message.Message):
    __slots__ = ("call",)
    CALL_FIELD_NUMBER: _ClassVar[int]
    call: _calls_pb2.Call
    def __init__(self, call: _Optional[_Union[_calls_pb2.Call, _Mapping]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("start_time", "end_time")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    start_time: str
    end_time: str
    def __init__(self, start_time: _Optional[str] = ..., end_time: _Optional[str] = ...) -> None: ...

class CallUsage(_message.Message):
    __slots__ = ("calls", "participant_minutes")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_MINUTES_FIELD_NUMBER: _ClassVar[int]
    calls: int
    participant_minutes: float
    def __init__(self, calls: _Optional[int] = ..., participant_minutes: _Optional[float] = ...) -> None: ...

class UsageByType(_message.Message):
    __slots__ = ("audio", "video")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    audio: CallUsage
    video: CallUsage
    def __init__(self, audio: _Optional[_Union[CallUsage, _Mapping]] = ..., video: _Optional[_Union[CallUsage, _Mapping]] = ...) -> None: ...

class UsageDay(_message.Message):
    __slots__ = ("date", "calls", "participant_minutes")
    DATE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_MINUTES_FIELD_NUMBER: _ClassVar[int]
    date: str
    calls: int
    participant_minutes: float
    def __init__(self, date: _Optional[str] = ..., calls: _Optional[int] = ..., participant_minutes: _Optional[float] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("calls", "answered_calls", "participant_minutes", "by_type", "days")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_CALLS_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_MINUTES_FIELD_NUMBER: _ClassVar[int]
    BY_TYPE_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    calls: int
    answered_calls: int
    participant_minutes: float
    by_type: UsageByType
    days: _containers.RepeatedCompositeFieldContainer[UsageDay]
    def __init__(self, calls: _Optional[int] = ..., answered_calls: _Optional[int] = ..., participant_minutes: _Optional[float] = ..., by_type: _Optional[_Union[UsageByType, _Mapping]] = ..., days: _Optional[_Iterable[_Union[UsageDay, _Mapping]]] = ...) -> None: ...
