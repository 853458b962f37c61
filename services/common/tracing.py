"""Optional tracing with OpenTelemetry: on when OTEL_EXPORTER_OTLP_ENDPOINT is set.

One trace follows a request from Envoy to every process that acts on it. The W3C
`traceparent` travels:

    client or Envoy ─ HTTP header ─► gRPC metadata ─► the RPC's server span
    ─► outbox.traceparent (the context of the transaction that wrote the event)
    ─► the relay's publish span ─ NATS header ─► the bridge's emit span and the
    webhook intake's record span.

Off (the default), `setup` does nothing: no provider, no exporter, no export thread.
Every helper here then returns after one check of a module global, and callers skip
headers and columns (`enabled()`), so the cost on the hot path is that check.

Spans never carry exception messages or request data (they may hold SQL, tokens or
personal data): a failure is recorded by its gRPC code or error type only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.logging import log_fields, tenant_id_var
from services.common.settings import Settings, parse_otlp_endpoint

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
EXPORT_TIMEOUT_SECONDS = 5.0

# Codes that mean the server failed (OpenTelemetry's gRPC conventions); the others are
# the caller's mistakes and leave a server span's status unset.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_propagator = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
NO_SPAN: AbstractContextManager[None] = nullcontext()  # reusable: nullcontext holds no state


def setup(settings: Settings) -> None:
    """Starts exporting spans to the collector, or does nothing when tracing is off.
    Called once per process, after any fork (the export thread does not survive one)."""
    global _tracer
    endpoint = parse_otlp_endpoint(settings.OTEL_EXPORTER_OTLP_ENDPOINT)
    if endpoint is None:
        return
    provider = TracerProvider(
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES (e.g. the pod's name) to ours.
        resource=Resource.create({"service.name": settings.SERVICE_NAME}),
        # A trace context from upstream (Envoy) carries the sampling decision: followed.
        sampler=ParentBased(TraceIdRatioBased(settings.TRACING_SAMPLE_PERCENT / 100)),
        # Flushes what is buffered at interpreter exit (after SIGTERM's shutdown).
        shutdown_on_exit=True,
    )
    exporter = OTLPSpanExporter(endpoint=endpoint[2], timeout=EXPORT_TIMEOUT_SECONDS)
    # Batched on a thread of its own: a slow or absent collector never blocks a request
    # (a full queue drops spans).
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = provider.get_tracer("sendsar")
    log.info("tracing on", extra=log_fields(collector=endpoint[2]))


def enabled() -> bool:
    return _tracer is not None


def _context_of(traceparent: str) -> otel_context.Context:
    return _propagator.extract({TRACEPARENT: traceparent})


def _traceparent(context: otel_context.Context | None) -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context)  # nothing when the context has no valid span
    return carrier.get(TRACEPARENT)


def traceparent_of(span: Span) -> str:
    """The W3C traceparent naming `span` as the parent of what follows it."""
    value = _traceparent(trace.set_span_in_context(span))
    assert value is not None  # a span this module started always has a valid context
    return value


def current_traceparent() -> str | None:
    """The traceparent of the span running now (the RPC's), or None (tracing off, or no
    span: a background sweep)."""
    if _tracer is None:
        return None
    return _traceparent(None)


# --- gRPC server spans --------------------------------------------------------------------


class RpcSpan:
    """The server span of one RPC, current (so what the handler writes carries its
    context) until `end`."""

    def __init__(self, tracer: trace.Tracer, method: str, metadata: Mapping[str, str]) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        # Envoy forwards the client's traceparent, or its own span's when it started one.
        parent = metadata.get(TRACEPARENT)
        self.span = tracer.start_span(
            f"{service}/{name}",
            context=_context_of(parent) if parent else None,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def end(self, code: grpc.StatusCode) -> None:
        otel_context.detach(self._token)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        tenant_id = tenant_id_var.get()
        if tenant_id is not None:
            self.span.set_attribute("sendsar.tenant_id", tenant_id)
        if code in _SERVER_FAULTS:
            self.span.set_status(Status(StatusCode.ERROR, code.name))
        self.span.end()


def rpc_span(method: str, metadata: Mapping[str, str]) -> RpcSpan | None:
    """A server span for the RPC, child of the incoming traceparent; None when off."""
    if _tracer is None:
        return None
    return RpcSpan(_tracer, method, metadata)


# --- spans continuing an event's trace ------------------------------------------------------


def start_span(
    name: str, parent: str, kind: SpanKind, attributes: Mapping[str, Any]
) -> Span | None:
    """A span child of `parent` (a traceparent), not made current; None when off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=_context_of(parent), kind=kind, attributes=attributes)


def end_span(span: Span, error: str | None = None) -> None:
    """Ends a span from `start_span`; `error` is a short reason (an error type), never
    an exception's message."""
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def child_span(
    name: str, parent: str | None, kind: SpanKind, attributes: Mapping[str, Any]
) -> AbstractContextManager[Span | None]:
    """A block timed by a span child of `parent`; a no-op block when tracing is off or
    there is no trace to continue (`parent` None). An exception leaving the block marks
    the span failed with its type only."""
    if _tracer is None or parent is None:
        return NO_SPAN
    return _ChildSpan(_tracer.start_span(name, _context_of(parent), kind, attributes))


class _ChildSpan(AbstractContextManager[Span | None]):
    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        end_span(self._span, exc_type.__name__ if exc_type is not None else None)
