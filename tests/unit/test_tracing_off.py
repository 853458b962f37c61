"""Tracing off (the default): nothing is set up, no span, no header, no column value."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.trace import SpanKind
from sendsar.calls.v1 import events_pb2

from services.common import tracing
from services.common.settings import Settings, load_settings, parse_otlp_endpoint
from services.events import types
from services.events.consumer import EventConsumer
from services.events.publish import MSG_ID_HEADER, Message, Publisher

DB = "postgresql://unused@127.0.0.1:1/unused"  # never connected here
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def off() -> Settings:
    settings = load_settings(ENV="test", DATABASE_URL=DB)
    tracing.setup(settings)
    return settings


def test_the_default_sets_nothing_up(off: Settings) -> None:
    assert off.OTEL_EXPORTER_OTLP_ENDPOINT == ""
    assert not tracing.enabled()
    assert tracing.rpc_span("/sendsar.calls.v1.CallService/StartCall", {}) is None
    assert tracing.current_traceparent() is None  # what the outbox insert writes: NULL
    assert tracing.child_span("x", TRACEPARENT, SpanKind.CONSUMER, {}) is tracing.NO_SPAN
    # No exporter: its batch thread would be running.
    assert not [t for t in threading.enumerate() if "Otel" in t.name]


class _JetStream:
    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def publish_async(self, subject: str, payload: bytes, **kw: Any) -> Any:
        self.headers.append(kw["headers"])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(stream=types.STREAM))
        return future


async def test_publish_writes_no_traceparent_header(off: Settings) -> None:
    js = _JetStream()
    nc: Any = SimpleNamespace(max_payload=1 << 20, jetstream=lambda: js)
    message = Message("evt_1", types.subject("ten_1", types.INVITE), b"x", TRACEPARENT)
    [outcome] = await Publisher(nc).publish([message], ack_wait=1)
    assert outcome.error is None
    assert js.headers == [{MSG_ID_HEADER: "evt_1"}]


async def test_consumer_hands_on_no_trace_context(off: Settings) -> None:
    got: list[list[str | None]] = []

    async def handle(batch: list[events_pb2.CallEvent], parents: list[str | None]) -> None:
        got.append(parents)

    event = events_pb2.CallEvent(id="evt_1", type=types.INVITE, tenant_id="ten_1")
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    msg: Any = SimpleNamespace(
        data=event.SerializeToString(),
        subject=types.subject("ten_1", types.INVITE),
        headers={"traceparent": TRACEPARENT},  # published by a tracing relay
        ack=ack,
    )
    consumer = EventConsumer(off, "test", handle, durable="test")
    await consumer._take([msg])
    assert got == [[None]] and acked == [True]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("", None),
        (
            "http://otel-collector:4318",
            ("otel-collector", 4318, "http://otel-collector:4318/v1/traces"),
        ),
        ("http://10.0.0.7/otlp/", ("10.0.0.7", 80, "http://10.0.0.7/otlp/v1/traces")),
    ],
)
def test_endpoint_parsing(value: str, parsed: tuple[str, int, str] | None) -> None:
    assert parse_otlp_endpoint(value) == parsed


@pytest.mark.parametrize(
    "value", ["https://collector:4318", "collector:4318", "http://collector:99999", "http://a b"]
)
def test_a_bad_endpoint_stops_the_process_naming_it(value: str) -> None:
    with pytest.raises(SystemExit, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        load_settings(ENV="test", DATABASE_URL=DB, OTEL_EXPORTER_OTLP_ENDPOINT=value)
