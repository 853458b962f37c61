"""Prometheus metrics of the call path (names as deploy/monitoring's dashboard and alerts
use them). Counted after commit, so a rolled-back transition counts nothing."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.calls.domain import Call, Change
from services.events.types import RING_STOPPED

STARTED = Counter("calls_started_total", "Calls started", ["mode"])
ENDED = Counter("calls_ended_total", "Calls ended", ["end_reason"])
RING_TIMEOUTS = Counter("ring_timeouts_total", "1:1 calls nobody answered in time")
RINGS_STOPPED = Counter("rings_stopped_total", "Users whose ring stopped", ["reason"])
# Set by every replica's reconciliation tick from the database (dashboards take max()).
LIVE = Gauge("calls_active", "Live calls by status", ["status"])


def count(before: Call | None, change: Change) -> None:
    call = change.call
    if before is None:  # a new call (one ended at once as busy included)
        STARTED.labels(call.mode).inc()
    if call.status == "ended" and (before is None or before.status != "ended"):
        ENDED.labels(call.end_reason or "").inc()
        if call.end_reason == "timeout":
            RING_TIMEOUTS.inc()
    for event in change.events:
        if event.type == RING_STOPPED:
            RINGS_STOPPED.labels(event.reason or "").inc(len(event.recipients))
