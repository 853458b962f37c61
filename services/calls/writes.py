"""What a transition writes besides the call row, rendered once: the participants that
changed, its events as outbox rows (protobuf, with the invites' ring tokens), the history
message of a call that ended, and the user locks it takes. The unit of work hands the
result to the store (`store.Write`) and answers the RPC with the same `pb.Call`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import events_pb2

from services.calls import history, locks, store
from services.calls.convert import call_to_pb
from services.calls.domain import Call, Change, Event
from services.common import tracing
from services.common.models import new_id
from services.events.types import RING_STOPPED, subject

# Socket recipients per outbox message: an event to a huge room is split so that no
# message comes near NATS's payload limit (each part reaches its own recipients).
RECIPIENTS_PER_MESSAGE = 500

# Mints a ring token: (call, user, ring deadline) -> token.
RingSigner = Callable[[Call, str, datetime], str]


@dataclass(frozen=True)
class Rendered:
    """A transition's write (None: nothing changed) and the call as the RPC answers it."""

    write: store.Write | None
    message: pb.Call


def render(before: Call | None, change: Change, now: datetime, sign_ring: RingSigner) -> Rendered:
    """The rows of a change of `before` (None: a new call)."""
    call = change.call
    message = call_to_pb(call)
    old = {p.user_id: p for p in before.participants} if before else {}
    changed = [p for p in call.participants if old.get(p.user_id) != p]
    moved = before is None or any(
        getattr(call, column) != getattr(before, column) for column in store.MUTABLE_COLUMNS
    )
    if not (changed or change.events or change.delete_room or moved):
        return Rendered(None, message)
    ended_now = call.status == "ended" and (before is None or before.status != "ended")
    write = store.Write(
        call=call,
        new=before is None,
        participants=changed,
        outbox=outbox_rows(call, message, change.events, now, sign_ring),
        history=store.HistoryRow(new_id("msg"), call.created_by, history.parts(call))
        if ended_now
        else None,
        user_locks=locks.user_keys(call.tenant_id, _joiners(before, call)),
        delete_room=change.delete_room,
        # The RPC's trace context for every event it wrote (None while tracing is off).
        traceparent=tracing.current_traceparent(),
    )
    return Rendered(write, message)


def _joiners(before: Call | None, after: Call) -> list[str]:
    """Users the change makes joined: their user locks are taken (services/calls/locks.py)."""
    was = {p.user_id for p in before.participants if p.state == "joined"} if before else set()
    return [p.user_id for p in after.participants if p.state == "joined" and p.user_id not in was]


def outbox_rows(
    call: Call, call_pb: pb.Call, events: Iterable[Event], now: datetime, sign_ring: RingSigner
) -> list[store.OutboxRow]:
    """Each event as outbox rows; large audiences in parts.

    The parts of one event share its event id; each part has its own row id, the NATS
    message id. The first part alone carries an invite's ring tokens (one per
    recipient, once) and is the one the webhook intake makes the tenant's delivery of;
    the others say which part they are (`part`). Whose ring stopped is in every part.
    """
    rows: list[store.OutboxRow] = []
    for e in events:
        event = events_pb2.CallEvent(
            id=new_id("evt"), type=e.type, tenant_id=call.tenant_id, user_id=e.actor, call=call_pb
        )
        event.occurred_at.FromDatetime(now)
        if e.reason is not None:
            event.reason = e.reason
        recipients = sorted(set(e.recipients))
        if e.ring_until is not None:
            event.ring.expires_at.FromDatetime(e.ring_until)
            for user in recipients:
                event.ring.tokens[user] = sign_ring(call, user, e.ring_until)
        if e.type == RING_STOPPED:
            event.user_ids.extend(recipients)
        chunks = [
            recipients[i : i + RECIPIENTS_PER_MESSAGE]
            for i in range(0, len(recipients), RECIPIENTS_PER_MESSAGE)
        ] or [[]]
        for part, chunk in enumerate(chunks):
            if part == 1:
                event.ClearField("ring")
            if part:
                event.part = part
            del event.recipient_user_ids[:]
            event.recipient_user_ids.extend(chunk)
            rows.append(
                store.OutboxRow(
                    id=event.id if part == 0 else f"{event.id}.{part}",
                    subject=subject(call.tenant_id, e.type),
                    payload=event.SerializeToString(),
                )
            )
    return rows
