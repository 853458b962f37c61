"""JSON logs, one object a line, carrying the request's tenant, call and request ids."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
call_id_var: ContextVar[str | None] = ContextVar("call_id", default=None)

_SEVERITY = {"WARNING": "WARNING", "CRITICAL": "CRITICAL"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "severity": _SEVERITY.get(record.levelname, record.levelname),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in (
            ("requestId", request_id_var),
            ("tenantId", tenant_id_var),
            ("callId", call_id_var),
        ):
            value = var.get()
            if value:
                entry[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library loggers that would print connection strings or bodies at INFO.
    for noisy in ("sqlalchemy.engine", "aiohttp.access", "uvicorn.access", "engineio", "socketio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_fields(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields merged into the JSON line."""
    return {"fields": fields}
