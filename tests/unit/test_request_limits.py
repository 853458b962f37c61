"""Pure logic of the request guards: token buckets, and the string/list checks every
request passes before its handler."""

from __future__ import annotations

import pytest
from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from sendsar.chat.v1 import chat_pb2
from sendsar.tenant.v1 import tenant_pb2

from services.common import validation
from services.common.errors import ServiceError
from services.common.rate_limit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=5, clock=clock)
    assert [buckets.take("a") for _ in range(6)] == [True] * 5 + [False]
    clock.now = 0.1  # one token back
    assert buckets.take("a") is True
    assert buckets.take("a") is False
    clock.now = 100  # refilled, never above the burst
    assert [buckets.take("a") for _ in range(6)] == [True] * 5 + [False]


def test_buckets_are_independent_per_key() -> None:
    buckets = TokenBuckets(rate=1, burst=2, clock=Clock())
    assert [buckets.take("flood") for _ in range(3)] == [True, True, False]
    assert buckets.take("other") is True


def test_a_byte_budget_counts_what_must_happen_against_what_may_be_refused() -> None:
    clock = Clock()
    budget = TokenBuckets(rate=100, burst=1000, clock=clock)
    assert budget.take("t", 600) is True
    assert budget.take("t", 600) is False  # refused: nothing spent
    budget.charge("t", 600)  # done anyway (an end, an answer): now in debt
    assert budget.take("t", 1) is False
    clock.now = 2.0  # -200 + 200
    assert budget.take("t", 1) is False
    clock.now = 30.0  # refilled to the burst, no further
    assert budget.take("t", 1000) is True and budget.take("other", 1000) is True


def test_memory_is_bounded_by_dropping_the_least_recently_used() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_keys=3, clock=Clock())
    for key in ("a", "b", "c"):
        buckets.take(key)
    buckets.take("a")  # refused, but now the most recently used
    buckets.take("d")
    assert len(buckets) == 3
    assert buckets.take("a") is False  # still remembered as empty
    assert buckets.take("b") is True  # forgotten: a fresh bucket


def _violation(err: ServiceError) -> tuple[str, str]:
    assert err.violations, err
    return err.violations[0][0], err.reason


def _refused(message: object) -> tuple[str, str]:
    with pytest.raises(ServiceError) as exc:
        validation.request_strings(message)  # type: ignore[arg-type]
    return _violation(exc.value)


def test_nul_in_a_nested_text_is_named_by_its_json_path() -> None:
    request = chat_pb2.PostMessageRequest(
        room_id="rm_x",
        parts=[chat_pb2.Part(type="text", text="ok"), chat_pb2.Part(type="text", text="a\x00b")],
    )
    assert _refused(request) == ("parts[1].text", "INVALID_ARGUMENT")


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "a\nb", "\x7f"])
def test_control_characters_in_one_line_fields_are_refused(bad: str) -> None:
    request = tenant_pb2.CreateSessionRequest(user_id="u", name=f"x{bad}y")
    assert _refused(request) == ("name", "INVALID_ARGUMENT")


def test_message_text_may_hold_line_breaks_and_tabs() -> None:
    request = chat_pb2.PostMessageRequest(parts=[chat_pb2.Part(type="text", text="a\r\n\tb")])
    validation.request_strings(request)


def test_repeated_strings_are_checked_each() -> None:
    request = chat_pb2.CreateRoomRequest(members=["a", "b\x00"])
    assert _refused(request) == ("members[1]", "INVALID_ARGUMENT")


def test_json_values_are_walked_as_json() -> None:
    custom = struct_pb2.Struct()
    custom.update({"ok": "line\nbreak", "deep": {"list": ["fine", "nul\x00"]}})
    # Struct is checked wherever it sits; here it is the request itself.
    assert _refused(custom)[0] == "deep.list[1]"


def test_over_long_strings_and_lists_are_refused() -> None:
    long_name = tenant_pb2.CreateSessionRequest(user_id="u", name="x" * (validation.MAX_STRING + 1))
    assert _refused(long_name)[0] == "name"
    many = chat_pb2.CreateRoomRequest(members=["m"] * (validation.MAX_LIST + 1))
    assert _refused(many)[0] == "members"


def test_opaque_bodies_are_left_to_their_rpc() -> None:
    validation.request_strings(httpbody_pb2.HttpBody(content_type="a", data=b"\x00\n{}"))


def test_the_error_carries_a_bad_request_naming_the_field() -> None:
    with pytest.raises(ServiceError) as exc:
        validation.request_strings(tenant_pb2.PutWebhookRequest(url="http://x/\x00"))
    status = exc.value.to_status()
    bad = error_details_pb2.BadRequest()
    found = [d for d in status.trailing_metadata if d[0] == "grpc-status-details-bin"]
    assert found
    details = status_pb2.Status.FromString(found[0][1]).details
    assert any(d.Unpack(bad) for d in details)
    assert [v.field for v in bad.field_violations] == ["url"]
