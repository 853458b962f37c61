import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sendsar.calls.v1 import calls_pb2 as _calls_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallEvent(_message.Message):
    __slots__ = ("id", "type", "occurred_at", "tenant_id", "user_id", "call", "recipient_user_ids", "reason", "ring", "user_ids", "part")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_USER_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    tenant_id: str
    user_id: str
    call: _calls_pb2.Call
    recipient_user_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    ring: Ring
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    part: int
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., user_id: _Optional[str] = ..., call: _Optional[_Union[_calls_pb2.Call, _Mapping]] = ..., recipient_user_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., ring: _Optional[_Union[Ring, _Mapping]] = ..., user_ids: _Optional[_Iterable[str]] = ..., part: _Optional[int] = ...) -> None: ...

class Ring(_message.Message):
    __slots__ = ("expires_at", "tokens")
    class TokensEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    tokens: _containers.ScalarMap[str, str]
    def __init__(self, expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tokens: _Optional[_Mapping[str, str]] = ...) -> None: ...
