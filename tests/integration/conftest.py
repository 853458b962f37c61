"""Fixtures shared by the integration test modules."""

from tests.integration.test_livekit_media import media  # noqa: F401  (rtc clients)
