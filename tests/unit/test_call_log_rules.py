"""Pure logic of the call log and usage: page tokens, request checks, usage arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sendsar.calls.v1 import call_log_pb2 as pb

from services.calls import usage
from services.calls.call_log import SCAN_BUDGET, Listing, listing
from services.calls.log_filters import Filters, Window, page_size, rfc3339
from services.common.errors import ServiceError
from services.common.page_tokens import PageTokens, Position

KEY = "unit-test-signing-key-0123456789abcdef-0123456789"
AT = datetime(2026, 11, 3, 9, 30, 0, 123456, tzinfo=UTC)
CALL = "call_" + "ab" * 16


def _field(error: pytest.ExceptionInfo[ServiceError]) -> str:
    assert error.value.reason == "INVALID_ARGUMENT"
    [(field, _)] = error.value.violations
    return field


# --- page tokens ---------------------------------------------------------------------


def test_a_page_token_names_its_position_to_its_tenant_and_filters() -> None:
    tokens = PageTokens(KEY, "call log")
    token = tokens.issue("tn_a", "[1]", Position(AT, CALL))
    assert tokens.read("tn_a", "[1]", token) == Position(AT, CALL)
    assert "=" not in token and CALL not in token  # opaque, URL-safe


def test_call_log_tokens_issued_before_the_listings_shared_the_code_still_read() -> None:
    # Issued by the call log's own page tokens (before the webhook deliveries used them):
    # a client paging through the log across that upgrade keeps its place.
    issued = (
        "MTc5MzY5ODIwMDEyMzQ1Ni5jYWxsX2FiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFi"
        "Lu-dX2oHaeRXdUYqEl-2rM4"
    )
    assert PageTokens(KEY, "call log").read("tn_a", "[1]", issued) == Position(AT, CALL)


@pytest.mark.parametrize(
    ("tenant", "filters", "key", "listing"),
    [
        ("tn_b", "[1]", KEY, "call log"),
        ("tn_a", "[2]", KEY, "call log"),
        ("tn_a", "[1]", KEY.upper(), "call log"),
        ("tn_a", "[1]", KEY, "webhook deliveries"),
    ],
)
def test_a_page_token_is_refused_elsewhere(
    tenant: str, filters: str, key: str, listing: str
) -> None:
    token = PageTokens(KEY, "call log").issue("tn_a", "[1]", Position(AT, CALL))
    with pytest.raises(ServiceError) as caught:
        PageTokens(key, listing).read(tenant, filters, token)
    assert _field(caught) == "pageToken"


def test_an_edited_or_made_up_page_token_is_refused() -> None:
    tokens = PageTokens(KEY, "call log")
    token = tokens.issue("tn_a", "[1]", Position(AT, CALL))
    flipped = token[:10] + ("B" if token[10] != "B" else "C") + token[11:]
    for forged in (flipped, token + "A", token + "=", "", "!!!", "A" * 400, token[:-1]):
        with pytest.raises(ServiceError) as caught:
            tokens.read("tn_a", "[1]", forged)
        assert _field(caught) == "pageToken", forged


# --- request checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-01T00:00:00Z", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01t01:00:00+01:00", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T00:00:00.1234567-00:30", datetime(2026, 11, 1, 0, 30, 0, 123456, UTC)),
    ],
)
def test_rfc3339_times(value: str, expected: datetime) -> None:
    assert rfc3339(value, "from") == expected


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-01",
        "2026-11-01T00:00:00",
        "2026-11-01 00:00:00Z",
        "20261101T000000Z",
        "2026-13-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "2026-11-01T00:00:00+24:00",
        "now",
    ],
)
def test_times_that_are_not_rfc3339(value: str) -> None:
    with pytest.raises(ServiceError) as caught:
        rfc3339(value, "to")
    assert _field(caught) == "to"


def test_list_filters_are_checked_and_rendered_the_same_way() -> None:
    request = pb.ListCallsRequest(
        room_id="rm_" + "0" * 32, status="ended", start_time="2026-11-01T01:00:00+01:00"
    )
    filters = Filters.of(request)
    assert filters.start == datetime(2026, 11, 1, tzinfo=UTC) and filters.user_id is None
    same = Filters.of(
        pb.ListCallsRequest(
            room_id="rm_" + "0" * 32, status="ended", start_time="2026-11-01T00:00:00Z"
        )
    )
    assert filters.canonical() == same.canonical()
    assert Filters().canonical() != Filters(status="ended").canonical()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListCallsRequest(status="gone"), "status"),
        (pb.ListCallsRequest(end_reason="END_REASON_UNSPECIFIED"), "endReason"),
        (pb.ListCallsRequest(user_id=""), "userId"),
        (pb.ListCallsRequest(room_id="call_" + "0" * 32 + "0"), "roomId"),
        (
            pb.ListCallsRequest(start_time="2026-11-02T00:00:00Z", end_time="2026-11-01T00:00:00Z"),
            "to",
        ),
    ],
)
def test_bad_list_filters(request_: pb.ListCallsRequest, field: str) -> None:
    with pytest.raises(ServiceError) as caught:
        Filters.of(request_)
    assert _field(caught) == field


def test_page_size_defaults_to_50_and_is_1_to_100() -> None:
    sized = [page_size(pb.ListCallsRequest(page_size=n)) for n in (1, 100)]
    assert (page_size(pb.ListCallsRequest()), *sized) == (50, 1, 100)
    for bad in (0, -1, 101):
        with pytest.raises(ServiceError):
            page_size(pb.ListCallsRequest(page_size=bad))


def test_a_guest_is_a_participant_to_filter_by() -> None:
    request = pb.ListCallsRequest(user_id="guest:gst_0123456789abcdef0123456789abcdef")
    assert Filters.of(request).user_id == "guest:gst_0123456789abcdef0123456789abcdef"


def test_a_usage_window_is_at_most_366_days() -> None:
    start = "2024-02-28T00:00:00Z"
    longest = Window.of(pb.GetUsageRequest(start_time=start, end_time="2025-02-28T00:00:00Z"))
    assert longest.days == 366
    with pytest.raises(ServiceError) as caught:
        Window.of(pb.GetUsageRequest(start_time=start, end_time="2025-02-28T00:00:00.000001Z"))
    assert _field(caught) == "to"
    one = Window.of(
        pb.GetUsageRequest(start_time="2026-11-01T23:00:00Z", end_time="2026-11-02T00:00:00Z")
    )
    assert one.days == 1


def test_the_driver_follows_the_filters() -> None:
    def plan(filters: Filters, after: Position | None = None) -> Listing:
        return listing("tn_a", filters, after, size=10)

    assert plan(Filters()).driver == "tenant"
    assert plan(Filters(status="ended")).driver == "tenant"
    assert plan(Filters(status="ringing")).driver == "live"
    assert plan(Filters(room_id="rm_x", status="active")).driver == "room"
    user = plan(Filters(user_id="u", room_id="rm_x"), Position(AT, CALL))
    assert user.driver == "user" and user.residual and "%(after_at)s" in user.sql
    assert user.params["budget"] == SCAN_BUDGET["user"] and user.params["after_id"] == CALL
    exact = plan(Filters(user_id="u", start=AT))
    assert not exact.residual and exact.params["budget"] == exact.params["limit"] == 11


# --- usage arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [("0", 0.0), ("0.299999", 0.0), ("0.3", 0.01), ("60", 1.0), ("910.4", 15.17), ("89.7", 1.5)],
)
def test_minutes_are_rounded_once_half_up(seconds: str, minutes: float) -> None:
    assert usage.minutes(Decimal(seconds)) == minutes


def test_usage_sums_exactly_and_rounds_each_figure_once() -> None:
    rows = [  # one answered call a day: audio on the 1st, video on the 2nd; 20.1 s each
        {"day": date(2026, 11, 1), "calls": 1, "answered": 1, "audio_calls": 1,
         "video_calls": 0, "audio_seconds": Decimal("20.1"), "video_seconds": None},
        {"day": date(2026, 11, 2), "calls": 1, "answered": 1, "audio_calls": 0,
         "video_calls": 1, "audio_seconds": None, "video_seconds": Decimal("20.1")},
    ]  # fmt: skip
    body = usage.to_pb(usage.tally(rows))
    assert (body.calls, body.answered_calls) == (2, 2)
    assert body.participant_minutes == 0.67  # 40.2 s; the days, rounded, add up to 0.68
    assert [(d.date, d.participant_minutes) for d in body.days] == [
        ("2026-11-01", 0.34),
        ("2026-11-02", 0.34),
    ]
    assert (body.by_type.audio.calls, body.by_type.audio.participant_minutes) == (1, 0.34)
    assert (body.by_type.video.calls, body.by_type.video.participant_minutes) == (1, 0.34)


def test_no_calls_is_zero_everywhere() -> None:
    body = usage.to_pb(usage.tally([]))
    assert body == pb.GetUsageResponse(
        by_type=pb.UsageByType(audio=pb.CallUsage(), video=pb.CallUsage())
    )
