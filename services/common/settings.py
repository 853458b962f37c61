"""Process configuration: one pydantic-settings class, built in main and passed down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that may come from a file mounted by Kubernetes (NAME_FILE).
_SECRET_FIELDS = ("DATABASE_URL", "SESSION_SIGNING_KEY", "LIVEKIT_API_SECRET")

# Dev defaults: usable on a laptop, refused when ENV=production (the default ENV).
DEV_SESSION_KEY = "dev-only-session-signing-key-change-me-0000000000"
DEV_LIVEKIT_KEY = "devkey"
DEV_LIVEKIT_SECRET = "dev-only-livekit-secret-change-me-000000000000"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    # Fail closed: a process nobody configured runs as production and refuses the
    # dev secrets; `make dev` and the tests say ENV=dev / ENV=test explicitly.
    ENV: Literal["dev", "test", "production"] = "production"
    LOG_LEVEL: str = "INFO"
    SERVICE_NAME: str = "sendsar"

    DATABASE_URL: str = Field(min_length=1)
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=200)
    DB_WAIT_SECONDS: float = Field(default=30.0, ge=0)

    NATS_URL: str = "nats://127.0.0.1:4222"

    GRPC_HOST: str = "127.0.0.1"
    GRPC_PORT: int = Field(default=50051, ge=0, le=65535)
    METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    SHUTDOWN_GRACE_SECONDS: float = 5.0

    SESSION_SIGNING_KEY: str = Field(default=DEV_SESSION_KEY, min_length=32)
    SESSION_DEFAULT_TTL_SECONDS: int = 3600
    SESSION_MAX_TTL_SECONDS: int = 86400

    # LIVEKIT_URL is where this service reaches LiveKit's API; the public URL
    # is what clients are told to connect to.
    LIVEKIT_URL: str = "http://127.0.0.1:7880"
    LIVEKIT_PUBLIC_URL: str = "ws://127.0.0.1:7880"
    LIVEKIT_API_KEY: str = DEV_LIVEKIT_KEY
    LIVEKIT_API_SECRET: str = Field(default=DEV_LIVEKIT_SECRET, min_length=32)
    LIVEKIT_API_TIMEOUT_SECONDS: float = 2.0

    RING_SWEEP_INTERVAL_SECONDS: float = Field(default=0.25, gt=0, le=5)
    OUTBOX_POLL_SECONDS: float = Field(default=1.0, gt=0)

    # socket bridge
    HTTP_HOST: str = "127.0.0.1"
    HTTP_PORT: int = Field(default=8090, ge=0, le=65535)

    # webhook dispatcher
    WEBHOOK_TIMEOUT_SECONDS: float = 5.0
    WEBHOOK_MAX_AGE_SECONDS: int = 24 * 3600
    WEBHOOK_BASE_DELAY_SECONDS: float = 1.0
    WEBHOOK_MAX_DELAY_SECONDS: float = 3600.0
    WEBHOOK_CONCURRENCY: int = 32

    # --- hardening: webhook targets, fair limits ----------------------------------
    # Webhook URLs resolving to loopback, private, link-local, ... addresses are
    # refused (at PUT and at every delivery) unless this is true (local receivers).
    WEBHOOK_ALLOW_PRIVATE_TARGETS: bool = False
    # Token buckets per process (so per replica): requests per second and burst, per
    # tenant, per credential (an API key, or one app user's sessions), and for
    # LiveKit's webhook RPC, which has a budget of its own.
    RATE_LIMIT_TENANT_PER_SECOND: float = Field(default=200.0, gt=0)
    RATE_LIMIT_TENANT_BURST: int = Field(default=400, ge=1)
    RATE_LIMIT_CREDENTIAL_PER_SECOND: float = Field(default=100.0, gt=0)
    RATE_LIMIT_CREDENTIAL_BURST: int = Field(default=200, ge=1)
    RATE_LIMIT_LIVEKIT_PER_SECOND: float = Field(default=200.0, gt=0)
    RATE_LIMIT_LIVEKIT_BURST: int = Field(default=400, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in _SECRET_FIELDS:
            path = os.environ.get(f"{name}_FILE")
            if path and name not in data:
                try:
                    data[name] = Path(path).read_text().strip()
                except OSError as exc:
                    # Named like any bad variable, not a traceback.
                    raise ValueError(f"{name}_FILE: cannot read {path} ({exc.strerror})") from None
        return data

    @model_validator(mode="after")
    def _refuse_dev_secrets_outside_dev(self) -> Settings:
        if self.ENV == "production":
            if self.SESSION_SIGNING_KEY == DEV_SESSION_KEY:
                raise ValueError("SESSION_SIGNING_KEY: the dev default is refused in production")
            if self.LIVEKIT_API_KEY == DEV_LIVEKIT_KEY:
                raise ValueError("LIVEKIT_API_KEY: the dev default is refused in production")
            if self.LIVEKIT_API_SECRET == DEV_LIVEKIT_SECRET:
                raise ValueError("LIVEKIT_API_SECRET: the dev default is refused in production")
        return self

    @property
    def libpq_url(self) -> str:
        """DATABASE_URL as psycopg itself takes it (for LISTEN connections)."""
        return "postgresql://" + self.sqlalchemy_url.removeprefix("postgresql+psycopg://")

    @property
    def sqlalchemy_url(self) -> str:
        url = self.DATABASE_URL
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        raise ValueError("DATABASE_URL must be a postgresql:// URL")


def load_settings(**overrides: Any) -> Settings:
    """Builds the settings; exits with a message naming the bad variable."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [
            # Whole-model checks already start with the variable's name.
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise SystemExit("invalid configuration:\n  " + "\n  ".join(lines)) from None
