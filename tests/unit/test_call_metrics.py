"""Call metrics count committed changes: starts by mode, ends by reason, ring timeouts,
stopped rings by reason."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import REGISTRY

from services.calls import domain, metrics
from tests.unit.test_call_rules import POLICY, direct, group, later, start


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


def test_stopped_rings_and_busy_starts_are_counted() -> None:
    accepted = value("rings_stopped_total", reason="accepted")
    timeouts = value("rings_stopped_total", reason="timeout")
    busy = value("rings_stopped_total", reason="busy")
    direct_starts = value("calls_started_total", mode="direct")
    busy_ends = value("calls_ended_total", end_reason="busy")

    call = group("dave")
    joined = domain.accept(call, "bob", POLICY, later(1))
    metrics.count(call, joined)
    assert value("rings_stopped_total", reason="accepted") == accepted + 1
    missed = domain.ring_timeouts(joined.call, later(45))  # carol and dave
    metrics.count(joined.call, missed)
    assert value("rings_stopped_total", reason="timeout") == timeouts + 2

    rejected = start("alice", "bob", policy=replace(POLICY, busy_policy="reject"), callee_busy=True)
    metrics.count(None, rejected)
    assert value("calls_started_total", mode="direct") == direct_starts + 1
    assert value("calls_ended_total", end_reason="busy") == busy_ends + 1
    assert value("rings_stopped_total", reason="busy") == busy + 1
