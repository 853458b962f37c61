"""The production Envoy config as shipped (deploy/k8s/overlays/prod), run for real on
loopback: TLS from a Kubernetes-style Secret volume and its rotation without a restart,
plain HTTP only redirecting, the internal listener routing nothing but LiveKit's webhook,
the metrics listener exposing nothing but stats, and the preStop drain."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from devstack import envoy
from devstack.procs import ROOT, Proc, free_port, http_ok, python_env, wait_until

K8S = ROOT / "deploy" / "k8s"
OPENSSL_REQ = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def make_cert(directory: Path, name: str) -> tuple[bytes, bytes]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        [*OPENSSL_REQ, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt)],
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
    admin_port: int

    def url(self, listener: str, path: str) -> str:
        scheme = "https" if listener == "public_tls" else "http"
        return f"{scheme}://127.0.0.1:{self.ports[listener]}{path}"

    def served_cert(self) -> str:
        return ssl.get_server_certificate(("127.0.0.1", self.ports["public_tls"]))


def same_cert(pem_a: str, pem_b: bytes) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b.decode())


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """Envoy with the prod overlay's envoy.yaml and sds.yaml, paths and ports moved to a
    scratch directory and free ports (no upstream runs: routing ends in 503)."""
    work = tmp_path_factory.mktemp("envoy-prod")
    etc, tls = work / "etc-envoy", work / "envoy-tls"
    etc.mkdir()
    tls.mkdir()
    shutil.copy(K8S / "generated" / "descriptors.binpb", etc / "descriptors.binpb")

    def moved(text: str) -> str:
        return text.replace("/etc/envoy-tls", str(tls)).replace("/etc/envoy/", f"{etc}/")

    (etc / "sds.yaml").write_text(moved((K8S / "overlays" / "prod" / "sds.yaml").read_text()))
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
    (etc / "envoy.yaml").write_text(yaml.safe_dump(config))
    assert set(ports) == {"public_tls", "public_http", "internal", "metrics"}

    crt, key = make_cert(work, "first.test")
    publish_secret(tls, crt, key, 1)
    proc = Proc("envoy-prod", envoy.command(etc / "envoy.yaml"), python_env({}), work)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready"), "envoy", proc=proc)
        yield Front(ports, tls, admin_port)
    finally:
        proc.stop()


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
