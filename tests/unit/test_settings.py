"""Configuration: fail fast naming the variable, *_FILE secrets, no dev secrets in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import DEV_SESSION_KEY, load_settings

DB = "postgresql://u@127.0.0.1:5432/db"


@pytest.fixture(autouse=True)
def _dev_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about other variables: ENV=dev, as `make dev` sets it."""
    monkeypatch.setenv("ENV", "dev")


def test_missing_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "DATABASE_URL" in str(exc.value)


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB)
    monkeypatch.setenv("GRPC_PORT", "not-a-port")
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "GRPC_PORT" in str(exc.value)


def test_secret_read_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("k" * 40 + "\n")
    monkeypatch.setenv("DATABASE_URL", DB)
    monkeypatch.setenv("SESSION_SIGNING_KEY_FILE", str(secret))
    assert load_settings().SESSION_SIGNING_KEY == "k" * 40


def test_production_refuses_dev_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB)
    monkeypatch.setenv("ENV", "production")
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "SESSION_SIGNING_KEY" in str(exc.value)
    monkeypatch.setenv("SESSION_SIGNING_KEY", "s" * 40)
    monkeypatch.setenv("LIVEKIT_API_KEY", "prod-key")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "l" * 40)
    assert load_settings().SESSION_SIGNING_KEY != DEV_SESSION_KEY


def test_unset_env_runs_as_production_and_refuses_dev_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ENV")
    monkeypatch.setenv("DATABASE_URL", DB)
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "SESSION_SIGNING_KEY" in str(exc.value)
    monkeypatch.setenv("SESSION_SIGNING_KEY", "s" * 40)
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "LIVEKIT_API_KEY" in str(exc.value)
    monkeypatch.setenv("LIVEKIT_API_KEY", "prod-key")
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "LIVEKIT_API_SECRET" in str(exc.value)
    monkeypatch.setenv("LIVEKIT_API_SECRET", "l" * 40)
    assert load_settings().ENV == "production"


@pytest.mark.parametrize(
    ("service", "refused"),
    [
        ("calls", "SESSION_SIGNING_KEY"),
        ("chat", "SESSION_SIGNING_KEY"),
        ("tenant", "SESSION_SIGNING_KEY"),
        ("socket-bridge", "SESSION_SIGNING_KEY"),
        ("webhooks", None),
        ("bootstrap", None),
    ],
)
def test_production_refuses_only_the_dev_secrets_a_service_uses(
    monkeypatch: pytest.MonkeyPatch, service: str, refused: str | None
) -> None:
    """Each Deployment mounts only its own secrets; the others stay at their defaults."""
    monkeypatch.setenv("ENV", "production")
    monkeypatch.setenv("DATABASE_URL", DB)
    if refused is None:
        assert load_settings(SERVICE_NAME=service).ENV == "production"
        return
    with pytest.raises(SystemExit) as exc:
        load_settings(SERVICE_NAME=service)
    assert refused in str(exc.value)
    monkeypatch.setenv("SESSION_SIGNING_KEY", "s" * 40)
    if service in ("calls", "chat"):
        with pytest.raises(SystemExit) as exc:
            load_settings(SERVICE_NAME=service)
        assert "LIVEKIT_API_KEY" in str(exc.value)
    else:  # tenant and the bridge never touch LiveKit: its dev defaults do not matter
        assert load_settings(SERVICE_NAME=service).ENV == "production"


def test_missing_secret_file_is_a_clear_start_up_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", DB)
    monkeypatch.setenv("SESSION_SIGNING_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(SystemExit) as exc:
        load_settings()
    message = str(exc.value)
    assert message.startswith("invalid configuration:")
    assert "SESSION_SIGNING_KEY_FILE" in message and str(tmp_path / "absent") in message


def test_short_secret_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB)
    monkeypatch.setenv("LIVEKIT_API_SECRET", "secret")
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert "LIVEKIT_API_SECRET" in str(exc.value)


def test_database_url_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
    settings = load_settings()
    assert settings.libpq_url == "postgresql://u@h/db"
    assert settings.database_params == {"user": "u", "host": "h", "dbname": "db"}
    for bad in ("mysql://u@h/db", "postgresql://u:secret@h/db?nonsense=1"):
        monkeypatch.setenv("DATABASE_URL", bad)
        with pytest.raises(SystemExit) as exc:
            load_settings()
        assert "DATABASE_URL" in str(exc.value) and "secret" not in str(exc.value)


def test_a_failover_database_url_names_every_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's multi-host form, which SQLAlchemy's URL parser refuses: every connection
    (engines, pools, LISTEN, Alembic) is opened from these keywords."""
    monkeypatch.setenv(
        "DATABASE_URL",
        "postgresql://calls:pw@db-1:5432,db-2:5433/calls?target_session_attrs=read-write",
    )
    assert load_settings().database_params == {
        "user": "calls",
        "password": "pw",
        "host": "db-1,db-2",
        "port": "5432,5433",
        "dbname": "calls",
        "target_session_attrs": "read-write",
    }


def test_nats_url_takes_a_clusters_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DB)
    monkeypatch.setenv("NATS_URL", "nats://n-0:4222, nats://n-1:4222,nats://n-2:4222")
    assert load_settings().nats_servers == ["nats://n-0:4222", "nats://n-1:4222", "nats://n-2:4222"]
    for bad in ("", "http://n:4222", "nats://a:4222,tls://b:4222", "nats://a b"):
        monkeypatch.setenv("NATS_URL", bad)
        with pytest.raises(SystemExit) as exc:
            load_settings()
        assert "NATS_URL" in str(exc.value)
