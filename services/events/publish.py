"""Publishing a batch of events to JetStream with every ack awaited together.

Each message goes out at once (nats-py's publish_async); the acks are then awaited as
one batch with one deadline, so a batch costs about one round trip instead of one per
event (bench/relay.py measures it). Every message carries its event id as Nats-Msg-Id:
a batch published again after a crash is de-duplicated by JetStream.

With tracing on, a message that carries the trace context of the transaction that wrote
it gets a publish span, child of that context, and the span's context goes out as the
`traceparent` header for the consumers' spans.

Each message gets its own outcome: published, refused (NATS will never take it: too
large for the server's max_payload, or a malformed subject) or failed (no ack in time,
or an error from JetStream) with the error's name.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum

from nats.aio.client import Client as NATS
from nats.aio.client import _validate_subject  # nats-py's own subject rules
from nats.errors import BadSubjectError, MaxPayloadError
from nats.js.api import PubAck
from opentelemetry.trace import Span, SpanKind

from services.common import tracing

MSG_ID_HEADER = "Nats-Msg-Id"
# The protocol's header block around the Nats-Msg-Id value (NATS/1.0, CRLFs, the name).
HEADER_OVERHEAD = 64
# A traceparent header line: the name, ": ", 55 characters, CRLF.
TRACEPARENT_OVERHEAD = 72


class Result(Enum):
    PUBLISHED = "published"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Message:
    msg_id: str
    subject: str
    payload: bytes
    traceparent: str | None = None  # of the transaction that wrote the event


@dataclass(frozen=True)
class Outcome:
    result: Result
    error: str | None = None


def refusal(nc: NATS, message: Message) -> str | None:
    """Why NATS would refuse this message outright, or None. Checked before sending:
    the server closes the whole connection on a message over its max_payload."""
    size = len(message.payload) + len(message.msg_id) + HEADER_OVERHEAD
    if message.traceparent is not None:
        size += TRACEPARENT_OVERHEAD
    if size > nc.max_payload:
        return f"MaxPayloadError: {size} bytes over the server's limit of {nc.max_payload}"
    try:
        _validate_subject(message.subject)
    except BadSubjectError:
        return "BadSubjectError: not a valid NATS subject"
    return None


class Publisher:
    """Publishes batches over one NATS connection, through one JetStream context for
    its whole life: nats-py subscribes a reply inbox for the acks of each context, so a
    context per batch left a subscription behind on the connection (and the server)
    with every batch."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def publish(self, messages: list[Message], ack_wait: float) -> list[Outcome]:
        """Publishes the messages in order and waits (at most `ack_wait` s) for all their
        acks."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        pending: dict[int, asyncio.Future[PubAck]] = {}
        traced = tracing.enabled()
        spans: dict[int, Span] = {}
        for i, message in enumerate(messages):
            refused = refusal(self.nc, message)
            if refused is not None:
                outcomes[i] = Outcome(Result.REFUSED, refused)
                continue
            headers = {MSG_ID_HEADER: message.msg_id}
            span = _publish_span(message) if traced else None
            if span is not None:
                spans[i] = span
                headers[tracing.TRACEPARENT] = tracing.traceparent_of(span)
            try:
                # No wait_stall: with one, nats-py wraps its semaphore wait in a task, which
                # yields to the event loop, so its flusher wrote every message with a syscall
                # of its own (the largest own-time entry of the calls workers' profile).
                # Without one, a batch is queued whole and written at once; the semaphore
                # (4,000 acks pending) is never short here: a batch is at most 500 and every
                # future is done or cancelled before the next batch.
                pending[i] = await self.js.publish_async(
                    message.subject, message.payload, headers=headers
                )
            except (MaxPayloadError, BadSubjectError) as exc:
                outcomes[i] = Outcome(Result.REFUSED, type(exc).__name__)
            except Exception as exc:  # not connected, buffer full, stalled: try again later
                outcomes[i] = Outcome(Result.FAILED, type(exc).__name__)
        if pending:
            await asyncio.wait(pending.values(), timeout=ack_wait)
        for i, future in pending.items():
            if not future.done():
                future.cancel()  # frees nats-py's slot for it
                outcomes[i] = Outcome(Result.FAILED, "TimeoutError: no ack in time")
            elif (error := future.exception()) is not None:
                outcomes[i] = Outcome(Result.FAILED, f"{type(error).__name__}: {error}"[:300])
            else:
                outcomes[i] = Outcome(Result.PUBLISHED)
        final = [o if o is not None else Outcome(Result.FAILED, "not sent") for o in outcomes]
        for i, span in spans.items():
            outcome = final[i]
            # The error's type only (the text before its first colon), as every span has it.
            reason = (outcome.error or "unknown").split(":", 1)[0]
            tracing.end_span(span, None if outcome.result is Result.PUBLISHED else reason)
        return final


def _publish_span(message: Message) -> Span | None:
    """A span for publishing an event that carries a trace context (else None)."""
    if message.traceparent is None:
        return None
    return tracing.start_span(
        "outbox publish",
        message.traceparent,
        SpanKind.PRODUCER,
        {
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.destination.name": message.subject,
            "messaging.message.id": message.msg_id,
        },
    )
