"""The production Envoy config as shipped (deploy/k8s/overlays/prod), run for real on
loopback: TLS from a Kubernetes-style Secret volume and its rotation without a restart,
plain HTTP only redirecting, the internal listener routing nothing but LiveKit's webhook
(and the public one not routing it), the gRPC listener serving gRPC over TLS with server
reflection and nothing else, the metrics listener exposing nothing but stats, and the
preStop drain. With the test stack's services behind it, internal services' gRPC calls
and reflection work end to end over TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sendsar.tenant.v1 import tenant_pb2, tenant_pb2_grpc

from devstack import envoy as envoy_render
from devstack.procs import ROOT, Proc, free_port, http_ok, python_env, wait_until
from tests.conftest import Tenant
from tests.integration.test_grpc_via_envoy import error_info, failure
from tests.stack import Stack

K8S = ROOT / "deploy" / "k8s"
OPENSSL_REQ = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


GRPC_HOST = "envoy-grpc.sendsar-calls.svc"  # the name internal services dial


def make_cert(directory: Path, name: str) -> tuple[bytes, bytes]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        [
            *OPENSSL_REQ,
            *("-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"),
            *("-keyout", str(key), "-out", str(crt)),
        ],
        check=True,
        capture_output=True,
    )
    return crt.read_bytes(), key.read_bytes()


def publish_secret(volume: Path, crt: bytes, key: bytes, version: int) -> None:
    """What the kubelet does for a Secret volume: files in a fresh directory, then one
    atomic rename of the ..data symlink (the event Envoy's watched_directory sees)."""
    data = volume / f"..{version}"
    data.mkdir()
    (data / "tls.crt").write_bytes(crt)
    (data / "tls.key").write_bytes(key)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(data.name)
    tmp.rename(volume / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


@dataclass
class Front:
    ports: dict[str, int]
    tls_volume: Path
    grpc_cert: bytes  # what the gRPC listener serves (self-signed: also the client's root)
    admin_port: int

    def url(self, listener: str, path: str) -> str:
        scheme = "https" if listener in ("public_tls", "internal_grpc") else "http"
        return f"{scheme}://127.0.0.1:{self.ports[listener]}{path}"

    def served_cert(self) -> str:
        return ssl.get_server_certificate(("127.0.0.1", self.ports["public_tls"]))

    def grpc_channel(self) -> grpc.Channel:
        """What an internal service dials: TLS to envoy-grpc.sendsar-calls.svc."""
        return grpc.secure_channel(
            f"127.0.0.1:{self.ports['internal_grpc']}",
            grpc.ssl_channel_credentials(root_certificates=self.grpc_cert),
            options=[("grpc.ssl_target_name_override", GRPC_HOST)],
        )


def same_cert(pem_a: str, pem_b: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b.decode())


def _endpoint(address: str) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}


@contextmanager
def prod_envoy(work: Path, upstreams: dict[str, list[str]] | None = None) -> Iterator[Front]:
    """Envoy with the prod overlay's envoy.yaml and SDS files, paths and ports moved to a
    scratch directory and free ports. `upstreams` (cluster -> host:port) replaces the
    clusters' in-cluster names; without it no upstream runs and routing ends in 503."""
    etc, tls, grpc_tls = work / "etc-envoy", work / "envoy-tls", work / "envoy-grpc-tls"
    for directory in (etc, tls, grpc_tls):
        directory.mkdir()
    shutil.copy(K8S / "generated" / "descriptors.binpb", etc / "descriptors.binpb")

    def moved(text: str) -> str:
        text = text.replace("/etc/envoy-grpc-tls", str(grpc_tls))
        return text.replace("/etc/envoy-tls", str(tls)).replace("/etc/envoy/", f"{etc}/")

    for sds in ("sds.yaml", "sds-grpc.yaml"):
        (etc / sds).write_text(moved((K8S / "overlays" / "prod" / sds).read_text()))
    config = yaml.safe_load(moved((K8S / "overlays" / "prod" / "envoy.yaml").read_text()))
    ports = {}
    for listener in config["static_resources"]["listeners"]:
        ports[listener["name"]] = free_port()
        listener["address"]["socket_address"]["port_value"] = ports[listener["name"]]
    admin_port = free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "envoy_admin":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            endpoint["endpoint"]["address"]["socket_address"]["port_value"] = admin_port
        elif upstreams and cluster["name"] in upstreams:
            cluster["load_assignment"]["endpoints"] = [
                {"lb_endpoints": [_endpoint(a) for a in upstreams[cluster["name"]]]}
            ]
    (etc / "envoy.yaml").write_text(yaml.safe_dump(config))
    assert set(ports) == {"public_tls", "public_http", "internal", "internal_grpc", "metrics"}

    crt, key = make_cert(work, "first.test")
    publish_secret(tls, crt, key, 1)
    grpc_crt, grpc_key = make_cert(work, GRPC_HOST)
    publish_secret(grpc_tls, grpc_crt, grpc_key, 1)
    proc = Proc("envoy-prod", envoy_render.command(etc / "envoy.yaml"), python_env({}), work)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready"), "envoy", proc=proc)
        yield Front(ports, tls, grpc_crt, admin_port)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with prod_envoy(tmp_path_factory.mktemp("envoy-prod")) as f:
        yield f


def test_https_serves_the_secret_s_certificate_and_routes(front: Front) -> None:
    assert same_cert(front.served_cert(), (front.tls_volume / "tls.crt").read_bytes())
    reply = httpx.get(front.url("public_tls", "/v1/tenant/settings"), verify=False)
    # Routed to the tenant cluster, which has no pod here: Envoy's own 503 body.
    assert reply.status_code == 503
    assert reply.json()["code"] == 14


def test_plain_http_only_redirects(front: Front) -> None:
    for method, path in [("GET", "/v1/tenant/settings"), ("POST", "/v1/sessions")]:
        reply = httpx.request(
            method,
            front.url("public_http", path),
            headers={"Host": "calls.example.com", "Authorization": "Bearer sk_secret"},
            json={"userId": "u"},
        )
        assert reply.status_code == 301, reply.text
        assert reply.headers["location"] == f"https://calls.example.com{path}"


def test_internal_listener_routes_only_the_livekit_webhook(front: Front) -> None:
    assert httpx.get(front.url("internal", "/ready")).status_code == 200
    webhook = httpx.post(
        front.url("internal", "/livekit/webhook"),
        content=b"{}",
        headers={"Content-Type": "application/webhook+json", "Authorization": "x"},
    )
    assert webhook.status_code == 503  # routed to calls (no pod here)
    for path in ("/v1/tenant/settings", "/chat/rooms/r/calls/active", "/socket.io/"):
        assert httpx.get(front.url("internal", path)).status_code == 404, path
    assert httpx.get(front.url("metrics", "/stats/prometheus")).status_code == 200
    for path in ("/clusters", "/config_dump", "/healthcheck/fail"):
        assert httpx.get(front.url("metrics", path)).status_code == 404, path


def test_a_renewed_certificate_is_served_without_a_restart(front: Front, tmp_path: Path) -> None:
    crt, key = make_cert(tmp_path, "renewed.test")
    publish_secret(front.tls_volume, crt, key, 2)
    deadline = time.monotonic() + 10
    while not same_cert(front.served_cert(), crt):
        assert time.monotonic() < deadline, "the renewed certificate was not loaded"
        time.sleep(0.2)


def test_prestop_hook_takes_the_pod_out_of_rotation(front: Front) -> None:
    """Runs the manifest's preStop command (its admin port moved, its final wait cut)."""
    deployment = yaml.safe_load((K8S / "base" / "envoy.yaml").read_text().split("\n---")[0])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    script = command[-1].replace("/9901", f"/{front.admin_port}").replace("sleep 25", "true")
    assert httpx.get(front.url("internal", "/ready")).status_code == 200
    subprocess.run([*command[:-1], script], check=True, timeout=10)
    assert httpx.get(front.url("internal", "/ready")).status_code == 503
    # Still answering while the load balancer lets go.
    assert httpx.get(front.url("public_tls", "/v1/tenant/settings"), verify=False).status_code


def test_the_public_listener_does_not_route_livekit_s_webhook(front: Front) -> None:
    """LiveKit posts to the internal listener; from outside its route is not there."""
    reply = httpx.post(
        front.url("public_tls", "/livekit/webhook"),
        content=b"{}",
        headers={"Content-Type": "application/webhook+json", "Authorization": "x"},
        verify=False,
    )
    assert reply.status_code == 404, reply.text
    assert reply.json()["details"][0]["reason"] == "NOT_FOUND"


def test_the_grpc_listener_serves_grpc_over_tls_and_nothing_else(front: Front) -> None:
    with front.grpc_channel() as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        # Routed to the tenant cluster, which has no pod here: a gRPC status, not JSON.
        err = failure(lambda: tenants.GetSettings(tenant_pb2.GetSettingsRequest(), timeout=10))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert error_info(err).reason == "UNAVAILABLE"
        webhook = channel.unary_unary("/sendsar.calls.v1.CallService/HandleLivekitWebhook")
        err = failure(lambda: webhook(b"", timeout=10))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err
    # No REST there, and no plaintext.
    reply = httpx.get(front.url("internal_grpc", "/v1/tenant/settings"), verify=False)
    assert reply.status_code == 404, reply.text
    with grpc.insecure_channel(f"127.0.0.1:{front.ports['internal_grpc']}") as plain:
        stub = tenant_pb2_grpc.TenantServiceStub(plain)
        err = failure(lambda: stub.GetSettings(tenant_pb2.GetSettingsRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def served(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """The prod config in front of the test stack's services."""
    upstreams = {name: stack.addresses(name) for name in ("tenant", "chat", "calls")}
    upstreams["socket_bridge"] = [f"127.0.0.1:{stack.bridge_port}"]
    with prod_envoy(tmp_path_factory.mktemp("envoy-prod-served"), upstreams) as f:
        yield f


def test_internal_services_call_grpc_over_tls_with_reflection(
    served: Front, tenant: Tenant
) -> None:
    with served.grpc_channel() as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        auth = [("authorization", f"Bearer {tenant.api_key}")]
        session = tenants.CreateSession(
            tenant_pb2.CreateSessionRequest(user_id="alice"), metadata=auth
        )
        settings = tenants.GetSettings(
            tenant_pb2.GetSettingsRequest(), metadata=[("authorization", f"Bearer {session.token}")]
        )
        assert settings.calls.max_participants == 8
        err = failure(lambda: tenants.GetSettings(tenant_pb2.GetSettingsRequest()))
        assert (err.code(), error_info(err).reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "UNAUTHENTICATED",
        )
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {
            "sendsar.tenant.v1.TenantService",
            "sendsar.chat.v1.ChatService",
            "sendsar.calls.v1.CallService",
        } <= services


def test_reflection_is_not_offered_on_the_public_listener(served: Front) -> None:
    public = grpc.secure_channel(
        f"127.0.0.1:{served.ports['public_tls']}",
        grpc.ssl_channel_credentials(
            root_certificates=(served.tls_volume / "tls.crt").read_bytes()
        ),
        options=[("grpc.ssl_target_name_override", "first.test")],
    )
    with public:
        err = failure(lambda: ProtoReflectionDescriptorDatabase(public).get_services())
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err
