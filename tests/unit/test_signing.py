"""Webhook signatures (pure logic)."""

from __future__ import annotations

from services.webhooks import signing

SECRET = "whsec_test"
BODY = b'{"id":"evt_1","type":"call.missed"}'


def test_signature_round_trip() -> None:
    header = signing.sign(SECRET, 1_700_000_000, BODY)
    assert header.startswith("t=1700000000,v1=")
    assert signing.verify(SECRET, header, BODY, now=1_700_000_010)


def test_tampered_body_wrong_secret_old_or_malformed_header_fail() -> None:
    header = signing.sign(SECRET, 1_700_000_000, BODY)
    assert not signing.verify(SECRET, header, BODY.replace(b"missed", b"ended"), now=1_700_000_000)
    assert not signing.verify("whsec_other", header, BODY, now=1_700_000_000)
    assert not signing.verify(SECRET, header, BODY, now=1_700_000_000 + 301)  # replayed later
    assert not signing.verify(SECRET, "garbage", BODY, now=1_700_000_000)
    assert not signing.verify(SECRET, "t=x,v1=00", BODY, now=1_700_000_000)
