"""Tracing through the real stack: one REST request through Envoy yields spans from Envoy,
the calls service, the outbox relay, the socket bridge and the webhook intake, all in one
trace and each the child of the step before it. Spans are received by a small OTLP/HTTP
collector in this test (ExportTraceServiceRequest, decoded with opentelemetry-proto)."""

from __future__ import annotations

import gzip
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanPb

from tests.conftest import Tenant, create_tenant
from tests.integration.realtime import Device
from tests.stack import Stack, new_workdir

START_CALL = "sendsar.calls.v1.CallService/StartCall"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]


def _value(kv: KeyValue) -> Any:
    which = kv.value.WhichOneof("value")
    return getattr(kv.value, which) if which else None


class Collector(ThreadingHTTPServer):
    """OTLP/HTTP (protobuf) on loopback, in a thread: up whenever any process exports."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        service=str(resource.get("service.name")),
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes={kv.key: _value(kv) for kv in s.attributes},
                    )
                    with self.lock:
                        self.spans.append(span)

    def of_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self._body()
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path.endswith("/v1/traces"):
            self.server.take(body)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def _body(self) -> bytes:
        """The request body; Envoy's exporter sends it chunked, the SDK's with a length."""
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length", 0)))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, if any
            pass
        return b"".join(chunks)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced_stack(collector: Collector) -> Iterator[Stack]:
    """A stack with tracing on: every service and Envoy export to the collector."""
    s = Stack(
        workdir=new_workdir(),
        settings={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            # The SDK's own knob: export every 0.2 s rather than every 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    try:
        s.start_all()
        yield s
    finally:
        s.stop_all()


def _wait_for(collector: Collector, trace_id: str, want: set[tuple[str, str]]) -> list[Span]:
    """The trace's spans once Envoy's and every (service, span name) wanted have arrived,
    each consumer's for every published event (Envoy exports its batches every 5 s; the
    services' batches arrive in any order)."""
    deadline = time.monotonic() + 30
    while True:
        spans = collector.of_trace(trace_id)
        arrived = {(s.service, s.name) for s in spans}
        published = sum(s.name == "outbox publish" for s in spans)
        complete = all(
            sum(s.name == name for s in spans) >= published
            for name in ("socket-bridge emit", "webhooks record")
        )
        if "envoy" in {s.service for s in spans} and want <= arrived and complete:
            return spans
        if time.monotonic() > deadline:
            return spans  # the assertions say what is missing
        time.sleep(0.2)


def _one(spans: list[Span], service: str, name: str | None = None) -> Span:
    found = [s for s in spans if s.service == service and name in (None, s.name)]
    assert len(found) == 1, (service, name, spans)
    return found[0]


async def _start_call_traced(
    stack: Stack, collector: Collector, tenant: Tenant, traceparent: str | None
) -> tuple[str, list[Span]]:
    """Starts a call from alice to bob (bob's socket connected) over REST, with or without
    a client traceparent; returns the trace id and the trace's spans."""
    room = tenant.room("alice", "bob")
    bob = await Device("bob").connect(stack.rest, tenant.session_token("bob"))
    try:
        with tenant.user("alice") as alice:
            headers = {"traceparent": traceparent} if traceparent else {}
            reply = alice.post(f"/chat/rooms/{room}/calls", json={"type": "audio"}, headers=headers)
        assert reply.status_code == 200, reply.text
        call = reply.json()["call"]["id"]
        await bob.wait_for("call.invite", call)
    finally:
        await bob.close()
    # The trace id as the calls service wrote it with the call's events.
    with psycopg.connect(stack.database_url) as db:
        rows = db.execute(
            "SELECT DISTINCT traceparent FROM outbox WHERE tenant_id = %s", (tenant.tenant_id,)
        ).fetchall()
    assert len(rows) == 1 and rows[0][0], rows  # every event of the one request, traced
    trace_id = rows[0][0].split("-")[1]
    want = {
        ("calls", START_CALL),
        ("calls", "outbox publish"),
        ("socket-bridge", "socket-bridge emit"),
        ("webhooks", "webhooks record"),
    }
    return trace_id, _wait_for(collector, trace_id, want)


def _assert_one_chain(spans: list[Span]) -> Span:
    """Envoy → calls → relay publish → bridge emit / webhook record, parent by parent;
    returns Envoy's span."""
    envoy = _one(spans, "envoy")
    assert envoy.kind == SpanPb.SPAN_KIND_SERVER
    rpc = _one(spans, "calls", START_CALL)
    assert rpc.kind == SpanPb.SPAN_KIND_SERVER
    assert rpc.parent_id == envoy.span_id  # the traceparent Envoy sent upstream
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    publishes = [s for s in spans if s.name == "outbox publish"]
    # call.invite (for bob's sockets) and call.started (for webhooks), both from StartCall.
    assert len(publishes) >= 2, spans
    assert all(p.parent_id == rpc.span_id for p in publishes)
    assert all(p.kind == SpanPb.SPAN_KIND_PRODUCER for p in publishes)
    by_event = {p.attributes["messaging.message.id"]: p for p in publishes}
    consumers = [s for s in spans if s.service in ("socket-bridge", "webhooks")]
    for name in ("socket-bridge emit", "webhooks record"):
        assert len([s for s in consumers if s.name == name]) == len(publishes), spans
    for span in consumers:
        assert span.kind == SpanPb.SPAN_KIND_CONSUMER
        # Each consumer span is the child of the publish span of its own event.
        assert span.parent_id == by_event[span.attributes["sendsar.event.id"]].span_id
    return envoy


async def test_envoy_starts_the_trace_and_every_step_joins_it(
    traced_stack: Stack, collector: Collector
) -> None:
    tenant = create_tenant(traced_stack, "traced")
    _, spans = await _start_call_traced(traced_stack, collector, tenant, None)
    envoy = _assert_one_chain(spans)
    assert envoy.parent_id == ""  # Envoy started it


async def test_a_client_traceparent_is_continued(traced_stack: Stack, collector: Collector) -> None:
    tenant = create_tenant(traced_stack, "traced-client")
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    trace_id_seen, spans = await _start_call_traced(
        traced_stack, collector, tenant, f"00-{trace_id}-{client_span}-01"
    )
    assert trace_id_seen == trace_id
    envoy = _assert_one_chain(spans)
    assert envoy.parent_id == client_span
