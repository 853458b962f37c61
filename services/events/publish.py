"""Publishing a batch of events to JetStream with every ack awaited together.

Each message goes out at once (nats-py's publish_async); the acks are then awaited as
one batch with one deadline, so a batch costs about one round trip instead of one per
event (bench/relay.py measures it). Every message carries its event id as Nats-Msg-Id:
a batch published again after a crash is de-duplicated by JetStream.

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

MSG_ID_HEADER = "Nats-Msg-Id"
# The protocol's header block around the Nats-Msg-Id value (NATS/1.0, CRLFs, the name).
HEADER_OVERHEAD = 64


class Result(Enum):
    PUBLISHED = "published"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class Message:
    msg_id: str
    subject: str
    payload: bytes


@dataclass(frozen=True)
class Outcome:
    result: Result
    error: str | None = None


def refusal(nc: NATS, message: Message) -> str | None:
    """Why NATS would refuse this message outright, or None. Checked before sending:
    the server closes the whole connection on a message over its max_payload."""
    size = len(message.payload) + len(message.msg_id) + HEADER_OVERHEAD
    if size > nc.max_payload:
        return f"MaxPayloadError: {size} bytes over the server's limit of {nc.max_payload}"
    try:
        _validate_subject(message.subject)
    except BadSubjectError:
        return "BadSubjectError: not a valid NATS subject"
    return None


async def publish_batch(nc: NATS, messages: list[Message], ack_wait: float) -> list[Outcome]:
    """Publishes the messages in order and waits (at most `ack_wait` s) for all their acks."""
    js = nc.jetstream()
    outcomes: list[Outcome | None] = [None] * len(messages)
    pending: dict[int, asyncio.Future[PubAck]] = {}
    for i, message in enumerate(messages):
        refused = refusal(nc, message)
        if refused is not None:
            outcomes[i] = Outcome(Result.REFUSED, refused)
            continue
        try:
            pending[i] = await js.publish_async(
                message.subject,
                message.payload,
                headers={MSG_ID_HEADER: message.msg_id},
                wait_stall=ack_wait,
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
    return [o if o is not None else Outcome(Result.FAILED, "not sent") for o in outcomes]
