"""Call metrics count committed changes: starts by mode, ends by reason, ring timeouts."""

from __future__ import annotations

from prometheus_client import REGISTRY

from services.calls import domain, metrics
from tests.unit.test_call_rules import POLICY, direct, group, later


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_starts_ends_and_ring_timeouts_are_counted() -> None:
    started = value("calls_started_total", mode="group")
    timeouts = value("ring_timeouts_total")
    ended = value("calls_ended_total", end_reason="timeout")

    call = group()
    metrics.count(None, domain.Change(call))
    assert value("calls_started_total", mode="group") == started + 1

    ringing = direct()
    metrics.count(ringing, domain.expire(ringing, later(45)))
    assert value("ring_timeouts_total") == timeouts + 1
    assert value("calls_ended_total", end_reason="timeout") == ended + 1

    direct_starts = value("calls_started_total", mode="direct")
    answered = domain.accept(direct(), "bob", POLICY, later(1)).call
    metrics.count(direct(), domain.Change(answered))  # not a start, not an end
    assert value("calls_started_total", mode="direct") == direct_starts
    assert value("ring_timeouts_total") == timeouts + 1
