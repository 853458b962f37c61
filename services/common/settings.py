"""Process configuration: one pydantic-settings class, built in main and passed down."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Secrets that may come from a file mounted by Kubernetes (NAME_FILE).
_SECRET_FIELDS = ("DATABASE_URL", "SESSION_SIGNING_KEY", "LIVEKIT_API_SECRET")
_EVENT_SECRET_FIELDS = ("NATS_PASSWORD", "NATS_TOKEN")  # the event pipeline's block below

# Dev defaults: usable on a laptop, refused when ENV=production (the default ENV).
DEV_SESSION_KEY = "dev-only-session-signing-key-change-me-0000000000"
DEV_LIVEKIT_KEY = "devkey"
DEV_LIVEKIT_SECRET = "dev-only-livekit-secret-change-me-000000000000"

_ORIGIN = re.compile(r"^https?://[^/\s,]+$")
# A collector's OTLP/HTTP base URL: plain http (an in-cluster collector or agent; TLS to a
# remote backend is the collector's business), host, optional port and path prefix.
_OTLP_ENDPOINT = re.compile(r"^http://(?P<host>[^/:\s]+)(?::(?P<port>\d{1,5}))?(?P<path>/\S*)?$")


def parse_otlp_endpoint(value: str) -> tuple[str, int, str] | None:
    """OTEL_EXPORTER_OTLP_ENDPOINT as (host, port, traces URL), or None when empty (tracing
    off). Shared by the services' exporter and the Envoy renderer, so both export to the
    same collector. As in the OpenTelemetry convention, /v1/traces follows the base URL."""
    if not value:
        return None
    match = _OTLP_ENDPOINT.match(value)
    if match is None or not 0 < int(match["port"] or 80) < 65536:
        raise ValueError(
            "OTEL_EXPORTER_OTLP_ENDPOINT: empty (tracing off) or an OTLP/HTTP base URL like"
            " http://otel-collector:4318"
        )
    host, port = match["host"], int(match["port"] or 80)
    base = value.rstrip("/")
    return host, port, f"{base}/v1/traces"


def parse_cors_origins(value: str) -> list[str]:
    """CORS_ALLOWED_ORIGINS: `*` or a comma-separated list of origins (scheme://host[:port]).
    Shared by the socket bridge and the Envoy renderer, so both allow the same origins."""
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    if origins == ["*"]:
        return origins
    bad = [o for o in origins if not _ORIGIN.match(o)]
    if not origins or bad:
        raise ValueError(
            "CORS_ALLOWED_ORIGINS: `*` or comma-separated origins like https://app.example.com"
            + (f" (not an origin: {bad[0]})" if bad else "")
        )
    return origins


# The dev defaults of the secrets, and which processes use which (the rest ignore them).
DEV_DEFAULTS = {
    "SESSION_SIGNING_KEY": DEV_SESSION_KEY,
    "LIVEKIT_API_KEY": DEV_LIVEKIT_KEY,
    "LIVEKIT_API_SECRET": DEV_LIVEKIT_SECRET,
}
_LIVEKIT = {"LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"}
SECRETS_USED: dict[str, set[str]] = {
    "calls": {"SESSION_SIGNING_KEY", *_LIVEKIT},
    "chat": {"SESSION_SIGNING_KEY", *_LIVEKIT},  # takes removed members out of media rooms
    "tenant": {"SESSION_SIGNING_KEY"},  # mints sessions
    "socket-bridge": {"SESSION_SIGNING_KEY"},
    "webhooks": set(),
    "events": set(),
    "bootstrap": set(),  # the command-line tool: the database only
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    # Fail closed: a process nobody configured runs as production and refuses the
    # dev secrets; `make dev` and the tests say ENV=dev / ENV=test explicitly.
    ENV: Literal["dev", "test", "production"] = "production"
    LOG_LEVEL: str = "INFO"
    SERVICE_NAME: str = "sendsar"

    # libpq's URL; several hosts for failover: postgresql://u:p@h1:5432,h2:5432/db
    # ?target_session_attrs=read-write (every connection then finds the primary).
    DATABASE_URL: str = Field(min_length=1)
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=200)
    DB_WAIT_SECONDS: float = Field(default=30.0, ge=0)

    # One NATS server or several of a cluster, comma-separated (nats:// or tls://).
    NATS_URL: str = "nats://127.0.0.1:4222"

    GRPC_HOST: str = "127.0.0.1"
    GRPC_PORT: int = Field(default=50051, ge=0, le=65535)
    METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    SHUTDOWN_GRACE_SECONDS: float = 5.0
    # Worker processes of a gRPC service; worker i serves on GRPC_PORT + i.
    WORKERS: int = Field(default=1, ge=1, le=64)

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
    # A live call nobody has been in the media room of for this long ends (no_media).
    CALL_MEDIA_GRACE_SECONDS: int = Field(default=60, ge=1, le=3600)
    # How often one replica checks active calls against LiveKit's rooms.
    CALL_RECONCILE_SECONDS: float = Field(default=15.0, gt=0, le=600)
    OUTBOX_POLL_SECONDS: float = Field(default=1.0, gt=0)

    # socket bridge
    HTTP_HOST: str = "127.0.0.1"
    HTTP_PORT: int = Field(default=8090, ge=0, le=65535)

    # browsers: origins allowed by Envoy's CORS policy and the Socket.IO handshake
    CORS_ALLOWED_ORIGINS: str = "*"

    # webhook dispatcher
    WEBHOOK_TIMEOUT_SECONDS: float = 5.0
    WEBHOOK_MAX_AGE_SECONDS: int = 24 * 3600
    WEBHOOK_BASE_DELAY_SECONDS: float = 1.0
    WEBHOOK_MAX_DELAY_SECONDS: float = 3600.0
    WEBHOOK_CONCURRENCY: int = 64
    # GET /v1/events?wait=: requests of one tenant waiting at once, per replica (429 beyond).
    EVENTS_MAX_WAITS_PER_TENANT: int = Field(default=10, ge=1, le=1000)

    # tracing (services/common/tracing.py): off while the endpoint is empty. The share of
    # traced requests is decided once, by Envoy for REST (and by a service for a request
    # that came without a trace context); everything downstream follows that decision.
    OTEL_EXPORTER_OTLP_ENDPOINT: str = ""
    TRACING_SAMPLE_PERCENT: float = Field(default=100.0, ge=0, le=100)

    @field_validator("OTEL_EXPORTER_OTLP_ENDPOINT")
    @classmethod
    def _valid_otlp_endpoint(cls, value: str) -> str:
        parse_otlp_endpoint(value)
        return value

    @field_validator("CORS_ALLOWED_ORIGINS")
    @classmethod
    def _valid_cors_origins(cls, value: str) -> str:
        parse_cors_origins(value)
        return value

    @property
    def cors_origins(self) -> list[str]:
        return parse_cors_origins(self.CORS_ALLOWED_ORIGINS)

    # --- event pipeline: database sessions, NATS, outbox relay, retention, sockets ---
    # A frozen or vanished holder of a lock loses it within these bounds (docs/decisions.md).
    DB_CONNECT_TIMEOUT_SECONDS: int = Field(default=5, ge=1)
    DB_KEEPALIVES_IDLE_SECONDS: int = Field(default=10, ge=1)
    DB_KEEPALIVES_INTERVAL_SECONDS: int = Field(default=5, ge=1)
    DB_KEEPALIVES_COUNT: int = Field(default=3, ge=1)
    DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    DB_LOCK_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    DB_STATEMENT_TIMEOUT_SECONDS: float = Field(default=15.0, gt=0)
    # The longest a request waits for a pooled connection (none free, or the database
    # away) before it fails as UNAVAILABLE: well below Envoy's 15 s route timeout.
    DB_POOL_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    # NATS credentials (at most one kind) and TLS; secrets also as NAME_FILE.
    NATS_USER: str | None = None
    NATS_PASSWORD: str | None = None
    NATS_TOKEN: str | None = None
    NATS_CREDS_FILE: str | None = None  # a .creds file (user JWT + nkey seed)
    NATS_NKEY_SEED_FILE: str | None = None
    NATS_TLS_CA_FILE: str | None = None
    NATS_TLS_CERT_FILE: str | None = None
    NATS_TLS_KEY_FILE: str | None = None
    # Copies of the event stream in a NATS cluster (3 in production: one node may fail).
    NATS_STREAM_REPLICAS: int = Field(default=1, ge=1, le=5)
    # A server that stops answering (frozen, partitioned: TCP stays up) is left for
    # another after 2-3 unanswered pings.
    NATS_PING_INTERVAL_SECONDS: int = Field(default=5, ge=1, le=120)
    NATS_STREAM_MAX_AGE_SECONDS: int = Field(default=7 * 24 * 3600, ge=60)
    NATS_STREAM_MAX_BYTES: int = Field(default=1 << 30, ge=1 << 20)
    OUTBOX_BATCH_SIZE: int = Field(default=500, ge=1, le=5000)
    OUTBOX_PUBLISH_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    OUTBOX_MAX_ATTEMPTS: int = Field(default=10, ge=1)
    RETENTION_SECONDS: int = Field(default=7 * 24 * 3600, ge=60)
    RETENTION_BATCH_SIZE: int = Field(default=500, ge=1, le=10_000)
    RETENTION_INTERVAL_SECONDS: float = Field(default=60.0, gt=0)
    SOCKETS_MAX_PER_USER: int = Field(default=10, ge=1)
    SOCKETS_MAX_PER_TENANT: int = Field(default=10_000, ge=1)
    # An Engine.IO connection without a connected Socket.IO socket (no CONNECT yet, a
    # refused one, or after a DISCONNECT) is closed after this long.
    SOCKETIO_CONNECT_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0)
    # Socket.IO CONNECTs one Engine.IO connection may send (each runs the call.sync
    # read); one more closes the connection. Per app user: a token bucket.
    SOCKETIO_CONNECTS_PER_CONNECTION: int = Field(default=5, ge=1)
    SOCKETIO_CONNECTS_PER_USER_PER_SECOND: float = Field(default=1.0, gt=0)
    SOCKETIO_CONNECTS_PER_USER_BURST: int = Field(default=30, ge=1)
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
    # Bytes of events (outbox payloads) a tenant may write, per replica: every transition
    # counts, a start over the budget gets 429 (scope "events"). The burst must hold the
    # largest start (a 1,000-member group's: about 0.5 MiB).
    EVENT_BYTES_PER_SECOND: float = Field(default=1024 * 1024, gt=0)
    EVENT_BYTES_BURST: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024)
    # Guests knocking with one call link, per replica: a leaked link cannot flood a host.
    GUEST_KNOCKS_PER_SECOND: float = Field(default=0.5, gt=0)
    GUEST_KNOCKS_BURST: int = Field(default=20, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name in (*_SECRET_FIELDS, *_EVENT_SECRET_FIELDS):
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
        """In production a process refuses the dev default of every secret it uses; each
        Deployment mounts only those (deploy/k8s). A process not listed uses them all."""
        if self.ENV != "production":
            return self
        used = SECRETS_USED.get(self.SERVICE_NAME, set(DEV_DEFAULTS))
        for name, default in DEV_DEFAULTS.items():
            if name in used and getattr(self, name) == default:
                raise ValueError(f"{name}: the dev default is refused in production")
        return self

    @model_validator(mode="after")
    def _event_pipeline_consistent(self) -> Settings:
        kinds = [
            name
            for name, value in (
                ("NATS_USER", self.NATS_USER),
                ("NATS_TOKEN", self.NATS_TOKEN),
                ("NATS_CREDS_FILE", self.NATS_CREDS_FILE),
                ("NATS_NKEY_SEED_FILE", self.NATS_NKEY_SEED_FILE),
            )
            if value
        ]
        if len(kinds) > 1:
            raise ValueError(f"NATS credentials: set only one of {', '.join(kinds)}")
        if bool(self.NATS_TLS_CERT_FILE) != bool(self.NATS_TLS_KEY_FILE):
            raise ValueError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
        # The relay waits for acks inside its lane's transaction (plus a 1 s probe).
        if self.OUTBOX_PUBLISH_TIMEOUT_SECONDS + 2 > self.DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS:
            raise ValueError(
                "OUTBOX_PUBLISH_TIMEOUT_SECONDS must stay 2 s below "
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS"
            )
        return self

    @field_validator("DATABASE_URL")
    @classmethod
    def _valid_database_url(cls, value: str) -> str:
        database_params(value)
        return value

    @field_validator("NATS_URL")
    @classmethod
    def _valid_nats_url(cls, value: str) -> str:
        parse_nats_servers(value)
        return value

    @property
    def libpq_url(self) -> str:
        """DATABASE_URL as libpq takes it (several hosts included)."""
        return libpq_url(self.DATABASE_URL)

    @property
    def database_params(self) -> dict[str, str]:
        """DATABASE_URL as libpq's keywords: what every connection is opened with."""
        return database_params(self.DATABASE_URL)

    @property
    def nats_servers(self) -> list[str]:
        return parse_nats_servers(self.NATS_URL)


def libpq_url(url: str) -> str:
    """A DATABASE_URL in libpq's own scheme (SQLAlchemy's spelling accepted too)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


def database_params(url: str) -> dict[str, str]:
    """libpq's keywords of a DATABASE_URL, parsed by libpq itself: `host` and `port` are
    comma-separated lists in the multi-host form, which SQLAlchemy's URL parser refuses
    (so engines get these keywords, not the URL). The URL itself is never echoed: it
    holds the password."""
    try:
        params = conninfo_to_dict(libpq_url(url))
    except ProgrammingError:
        raise ValueError("DATABASE_URL is not a valid PostgreSQL URL") from None
    return {name: str(value) for name, value in params.items() if value is not None}


def parse_nats_servers(value: str) -> list[str]:
    """NATS_URL: one server URL or several, comma-separated."""
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers or any(not re.match(r"^(nats|tls)://[^\s/]+/?$", s) for s in servers):
        raise ValueError("NATS_URL: nats:// or tls:// URLs, comma-separated")
    if len({s.split("://", 1)[0] for s in servers}) > 1:
        raise ValueError("NATS_URL: all nats:// or all tls://, not both")
    return servers


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
