"""Settings of the event pipeline that are refused at start."""

from __future__ import annotations

import pytest

from services.common.settings import load_settings

DB = "postgresql://unused@127.0.0.1:1/unused"


def test_settings_refuse_two_kinds_of_credentials_and_half_a_client_certificate() -> None:
    with pytest.raises(SystemExit, match="only one of NATS_USER, NATS_TOKEN"):
        load_settings(ENV="test", DATABASE_URL=DB, NATS_USER="u", NATS_TOKEN="t")
    with pytest.raises(SystemExit, match="NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE"):
        load_settings(ENV="test", DATABASE_URL=DB, NATS_TLS_CERT_FILE="/x.pem")


def test_settings_keep_the_relays_ack_wait_below_the_idle_transaction_bound() -> None:
    with pytest.raises(SystemExit, match="OUTBOX_PUBLISH_TIMEOUT_SECONDS"):
        load_settings(
            ENV="test",
            DATABASE_URL=DB,
            OUTBOX_PUBLISH_TIMEOUT_SECONDS=9,
            DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS=10,
        )
