"""Fixtures shared by the integration test modules."""

from tests.integration.test_events_socketio import bridge, connect  # noqa: F401  (devices)
from tests.integration.test_livekit_media import lk, media  # noqa: F401  (fixtures: LiveKit, rtc clients)
from tests.integration.test_outbox_relay import scratch_db  # noqa: F401  (own database)
from tests.integration.test_webhooks import dispatcher  # noqa: F401
from tests.integration.test_webhooks import receiver as hook_receiver  # noqa: F401
