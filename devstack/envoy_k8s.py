"""Turns Envoy's Kubernetes render (`python -m devstack.envoy --k8s`) into the in-cluster
config the overlays ship: per-pod balancing safeguards, retries on connect failure,
circuit breakers sized for websockets, an in-cluster listener (LiveKit's webhook and the
readiness probe), an in-cluster gRPC listener for internal services (the three API
services and server reflection, nothing else), a Prometheus listener, and with --tls the
production front door (TLS from a Secret mounted at /etc/envoy-tls, plain HTTP only
redirecting) and TLS on the gRPC listener (a Secret of its own, /etc/envoy-grpc-tls).

It reads the render on stdin and prints the result, so it depends only on the rendered
names (listener "public", clusters tenant/chat/calls/socket_bridge), not on how
devstack/envoy.py builds them:

    python -m devstack.envoy --k8s | python -m devstack.envoy_k8s --tls
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import yaml

Config = dict[str, Any]

PUBLIC_PORT = 8080  # plain HTTP: the API in dev, only a redirect to HTTPS with --tls
TLS_PORT = 8443
INTERNAL_PORT = 8081  # in-cluster only: LiveKit's webhook and the readiness probe
GRPC_PORT = 8082  # in-cluster only: gRPC for internal services (TLS with --tls)
METRICS_PORT = 9902  # /stats/prometheus, for Prometheus only
ADMIN_PORT = 9901  # the render binds the admin API to 127.0.0.1 (preStop drains through it)
READY_PATH = "/ready"
MAX_DOWNSTREAM_CONNECTIONS = 55000  # above the bridge cluster's 50k websockets
GRPC_CLUSTERS = ("tenant", "chat", "calls")
BRIDGE_CLUSTER = "socket_bridge"
LIVEKIT_WEBHOOK_RPC = "/sendsar.calls.v1.CallService/HandleLivekitWebhook"
REFLECTION_PREFIX = "/grpc.reflection."
# The TLS certificates: SDS files (in the envoy-config ConfigMap, one secret each) naming
# the files of kubernetes.io/tls Secrets; Envoy watches each Secret's directory, so a
# renewed certificate (cert-manager) is picked up without a restart. The public one names
# the public host; the gRPC listener's names the in-cluster Service
# (envoy-grpc.sendsar-calls.svc), typically from a cluster-internal CA.
SDS_PATH = "/etc/envoy/sds.yaml"
TLS_DIR = "/etc/envoy-tls"
GRPC_SDS_PATH = "/etc/envoy/sds-grpc.yaml"
GRPC_TLS_DIR = "/etc/envoy-grpc-tls"

# Only failures where the request never reached a service's handler are retried: a refused
# or failed connection (a pod that just went away), a stream the upstream refused (its
# GOAWAY), or CANCELLED, which a gRPC server answers for a call that arrives while it shuts
# down (its handlers in flight get the whole grace period, longer than the route timeout).
# Nothing a handler may have acted on is retried, so a retry never repeats a state change.
_RETRY_POLICY: Config = {
    "retry_on": "connect-failure,refused-stream,reset-before-request,cancelled",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
}


def _breakers(*, connections: int, requests: int) -> Config:
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": connections,
                "max_pending_requests": 1024,
                "max_requests": requests,
                # Retries at most 20 % of active requests: no retry storm when pods go away.
                "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 10},
            }
        ]
    }


# gRPC clusters multiplex over a few HTTP/2 connections per pod: bound concurrent requests.
# The bridge cluster holds one upstream connection and one open request per websocket for
# the socket's whole life, so Envoy's defaults (1024 each) would cap every Envoy pod at 1024
# sockets: 50k per Envoy pod instead (an idle websocket costs Envoy a few KiB; the pod's
# memory limit and the overload manager's connection cap bound the rest).
_GRPC_BREAKERS = _breakers(connections=1024, requests=4096)
_BRIDGE_BREAKERS = _breakers(connections=50000, requests=50000)

# A pod that stops serving (NOT_SERVING on SIGTERM) leaves the rotation within a second or
# two, before the headless Service's DNS catches up.
_GRPC_HEALTH_CHECK: Config = {
    "timeout": "1s",
    "interval": "2s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
    # Envoy's default for a cluster without traffic is one check a minute: a new pod (or
    # one back after a restart) would wait that long for its first request.
    "no_traffic_interval": "4s",
    "grpc_health_check": {},
}


def _typed(type_name: str, **fields: Any) -> Config:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _router() -> Config:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
    }


def _hcm(stat_prefix: str, routes: list[Config], filters: list[Config]) -> Config:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": _typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            stat_prefix=stat_prefix,
            codec_type="AUTO",
            route_config={
                "name": stat_prefix,
                "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
            },
            http_filters=[*filters, _router()],
        ),
    }


def _listener(name: str, port: int, hcm: Config) -> Config:
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }


def _find(items: list[Config], name: str) -> Config:
    for item in items:
        if item.get("name") == name:
            return item
    raise SystemExit(f"the rendered Envoy config has no {name!r}")


def _hcm_config(listener: Config) -> Config:
    hcm = _find(
        listener["filter_chains"][0]["filters"], "envoy.filters.network.http_connection_manager"
    )
    config: Config = hcm["typed_config"]
    return config


def _harden_routes(public: Config) -> None:
    for vhost in _hcm_config(public)["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            action = route.get("route")
            if action is None:
                continue
            if action["cluster"] == BRIDGE_CLUSTER:
                # A websocket upgrade is retried only when no bridge pod took the connection.
                action["retry_policy"] = {**_RETRY_POLICY, "retry_on": "connect-failure"}
            else:
                action["retry_policy"] = copy.deepcopy(_RETRY_POLICY)


def _harden_clusters(clusters: list[Config]) -> None:
    for cluster in clusters:
        if cluster["name"] in GRPC_CLUSTERS:
            cluster["circuit_breakers"] = copy.deepcopy(_GRPC_BREAKERS)
            cluster["health_checks"] = [copy.deepcopy(_GRPC_HEALTH_CHECK)]
        elif cluster["name"] == BRIDGE_CLUSTER:
            cluster["circuit_breakers"] = copy.deepcopy(_BRIDGE_BREAKERS)
        else:
            continue
        if cluster.get("type") == "STRICT_DNS":
            # Headless Services: DNS answers every ready pod, refreshed at the record's TTL.
            cluster["respect_dns_ttl"] = True
            cluster["dns_refresh_rate"] = "5s"


def harden(config: Config) -> Config:
    """Retries, circuit breakers and health checks on the rendered routes and clusters
    (also used by the multi-replica test on its local render)."""
    resources = config["static_resources"]
    _harden_routes(_find(resources["listeners"], "public"))
    _harden_clusters(resources["clusters"])
    return config


def _internal_listener(public: Config) -> Config:
    """LiveKit's webhook and /ready, never on the LoadBalancer. The transcoder (with the
    descriptor set) turns POST /livekit/webhook into its RPC; no other RPC is routed."""
    filters = _hcm_config(public)["http_filters"]
    transcoder = copy.deepcopy(_find(filters, "envoy.filters.http.grpc_json_transcoder"))
    transcoder["typed_config"]["services"] = ["sendsar.calls.v1.CallService"]
    health = {
        "name": "envoy.filters.http.health_check",
        "typed_config": _typed(
            "envoy.extensions.filters.http.health_check.v3.HealthCheck",
            # 503 once the preStop hook has failed the health check, so the pod leaves
            # the Service's endpoints while it drains.
            pass_through_mode=False,
            headers=[{"name": ":path", "string_match": {"exact": READY_PATH}}],
        ),
    }
    routes = [
        {
            "match": {"path": LIVEKIT_WEBHOOK_RPC},
            "route": {
                "cluster": "calls",
                "timeout": "15s",
                "retry_policy": copy.deepcopy(_RETRY_POLICY),
            },
        }
    ]
    return _listener("internal", INTERNAL_PORT, _hcm("internal", routes, [health, transcoder]))


def _public_routes_only(public: Config) -> None:
    """LiveKit posts its webhook to the internal listener: on the public one its RPC (POST
    /livekit/webhook once transcoded, or called as gRPC) is a 404, so nobody outside spends
    its budget. Server reflection is for internal services: on the gRPC listener only."""
    vhost = _hcm_config(public)["route_config"]["virtual_hosts"][0]
    routes = [r for r in vhost["routes"] if r["match"].get("prefix") != REFLECTION_PREFIX]
    vhost["routes"] = [_not_found(LIVEKIT_WEBHOOK_RPC), *routes]


def _not_found(path: str) -> Config:
    return {"match": {"path": path}, "direct_response": {"status": 404}}


# The public listener's filters the gRPC listener keeps: no CORS (no browsers), no JSON
# guard and no transcoder (gRPC only).
_GRPC_FILTERS = ("envoy.filters.http.local_ratelimit", "envoy.filters.http.buffer")


def _grpc_listener(public: Config) -> Config:
    """Internal services' gRPC (shared/DESIGN.md, "Internal services over gRPC"): the
    public listener's connection manager (limits, timeouts, per-address rate limit, local
    replies as gRPC status, access log) with its gRPC routes alone: the three API services
    and server reflection. Anything else, REST included, is a 404 (UNIMPLEMENTED)."""
    listener = copy.deepcopy(public)
    listener["name"] = "internal_grpc"
    listener["address"] = {"socket_address": {"address": "0.0.0.0", "port_value": GRPC_PORT}}
    hcm = _hcm_config(listener)
    hcm["stat_prefix"] = "internal_grpc"
    hcm.pop("upgrade_configs", None)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] in _GRPC_FILTERS]
    hcm["http_filters"].append(_router())
    hcm["route_config"]["name"] = "internal_grpc"
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost.pop("typed_per_filter_config", None)
    grpc_routes = [r for r in vhost["routes"] if "grpc" in r["match"]]
    fallback = vhost["routes"][-1]
    vhost["routes"] = [_not_found(LIVEKIT_WEBHOOK_RPC), *grpc_routes, fallback]
    return listener


def _metrics_listener() -> Config:
    routes = [
        {
            "match": {"path": "/stats/prometheus"},
            "route": {"cluster": "envoy_admin", "timeout": "5s"},
        }
    ]
    return _listener("metrics", METRICS_PORT, _hcm("metrics", routes, []))


def _admin_cluster() -> Config:
    return {
        "name": "envoy_admin",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "envoy_admin",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": ADMIN_PORT,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def _use_tls(listener: Config, *, secret: str, sds_path: str, alpn: list[str]) -> None:
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": _typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            common_tls_context={
                "alpn_protocols": alpn,
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "tls_certificate_sds_secret_configs": [
                    {
                        "name": secret,
                        "sds_config": {
                            "path_config_source": {"path": sds_path},
                            "resource_api_version": "V3",
                        },
                    }
                ],
            },
        ),
    }


def _redirect_listener() -> Config:
    routes = [{"match": {"prefix": "/"}, "redirect": {"https_redirect": True}}]
    return _listener("public_http", PUBLIC_PORT, _hcm("public_http", routes, []))


def sds_file(secret: str, directory: str) -> str:
    """An SDS resource a TLS listener reads (shipped beside the config)."""
    resource = {
        "resources": [
            _typed(
                "envoy.extensions.transport_sockets.tls.v3.Secret",
                name=secret,
                tls_certificate={
                    "certificate_chain": {"filename": f"{directory}/tls.crt"},
                    "private_key": {"filename": f"{directory}/tls.key"},
                    "watched_directory": {"path": directory},
                },
            )
        ]
    }
    return yaml.safe_dump(resource, sort_keys=False)


def transform(rendered: str, *, tls: bool) -> Config:
    config: Config = yaml.safe_load(rendered)
    resources = config["static_resources"]
    listeners: list[Config] = resources["listeners"]
    public = _find(listeners, "public")
    harden(config)
    resources["clusters"].append(_admin_cluster())
    grpc_listener = _grpc_listener(public)
    _public_routes_only(public)
    listeners.append(_internal_listener(public))
    listeners.append(grpc_listener)
    listeners.append(_metrics_listener())
    # Websockets are long-lived: cap what one pod accepts instead of running out of memory.
    config["overload_manager"] = {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": _typed(
                    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS,
                ),
            }
        ]
    }
    if tls:
        # File-based SDS wants a node identity.
        config["node"] = {"id": "envoy", "cluster": "sendsar-calls"}
        public["name"] = "public_tls"
        public["address"]["socket_address"]["port_value"] = TLS_PORT
        _use_tls(public, secret="public_tls", sds_path=SDS_PATH, alpn=["h2", "http/1.1"])
        _use_tls(grpc_listener, secret="internal_grpc_tls", sds_path=GRPC_SDS_PATH, alpn=["h2"])
        listeners.append(_redirect_listener())
    return config


HEADER = """\
# GENERATED by `make k8s` (devstack/envoy_k8s.py over `python -m devstack.envoy --k8s`).
# Do not edit: change envoy/envoy.yaml.tmpl or devstack/envoy_k8s.py and re-run make k8s.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls", action="store_true", help="the production front door")
    parser.add_argument("--sds", action="store_true", help="print the public TLS SDS file instead")
    parser.add_argument(
        "--sds-grpc", action="store_true", help="print the gRPC listener's TLS SDS file instead"
    )
    args = parser.parse_args()
    if args.sds:
        sys.stdout.write(HEADER + sds_file("public_tls", TLS_DIR))
        return
    if args.sds_grpc:
        sys.stdout.write(HEADER + sds_file("internal_grpc_tls", GRPC_TLS_DIR))
        return
    config = transform(sys.stdin.read(), tls=args.tls)
    sys.stdout.write(HEADER + yaml.safe_dump(config, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
