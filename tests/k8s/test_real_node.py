"""The dev overlay on a real node (tests/k8s/node.py: containerd, runc, the kubelet, cluster
DNS) with the images built here (deploy/k8s/e2e/local: the application image, PostgreSQL,
NATS and Envoy from `make dev`'s wheels). Every pod runs as the manifests say (non-root,
read-only root, restricted), the migrations run as init containers, every pod turns Ready,
and a call goes through the Envoy Service the way the README tells a developer to reach it
(`kubectl port-forward svc/envoy`): REST start, accept and end, and the callee's Socket.IO
device gets the call.invite."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.procs import ROOT, Proc, free_port, port_open, python_env, wait_until
from tests.integration.realtime import Device
from tests.k8s.cluster import ControlPlane, rendered
from tests.k8s.conftest import E2E, NAMESPACE, Builds, control_plane
from tests.k8s.node import Node, pause_image

LOCAL_IMAGES = ("sendsar-calls", "sendsar-envoy", "sendsar-postgres", "sendsar-nats")
DATABASE_DEPLOYMENTS = ("tenant", "chat", "calls", "webhooks")
DEPENDENCIES = ("postgres", "nats")
NAMESPACES = (NAMESPACE, *DEPENDENCIES)

# The first test also waits for the module's cluster to start (builds are cached).
pytestmark = pytest.mark.timeout(900)


def local_overlay(builds: Builds, workdir: Path) -> Path:
    """deploy/k8s/e2e/local with the tags `make image server-images` built."""
    overlay = workdir / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(E2E / "local", overlay)],
                "images": [
                    {"name": ref.rsplit(":", 1)[0], "newTag": ref.rsplit(":", 1)[1]}
                    for name, ref in builds.images.items()
                    if name in LOCAL_IMAGES
                ],
            }
        )
    )
    return overlay


@pytest.fixture(scope="module")
def cluster(builds: Builds) -> Iterator[ControlPlane]:
    """The newest control plane and a real node, the dev overlay applied and Ready."""
    missing = [name for name in LOCAL_IMAGES if name not in builds.images]
    assert not missing, f"K8S_E2E_IMAGES lacks {missing}: run through make k8s-e2e"
    with control_plane("newest", builds, "node", controllers=True) as plane:
        node = Node(plane, plane.workdir / "node")
        try:
            pause = pause_image(builds.newest / "pause")
            node.start([*(builds.images[name] for name in LOCAL_IMAGES), pause], pause)
            manifest = rendered(local_overlay(builds, plane.workdir), builds.kustomize)
            docs = [d for d in yaml.safe_load_all(manifest) if d]
            # The dependencies first, as the README's order has it, then the application.
            apply_until_ready(plane, node, [d for d in docs if namespace_of(d) in DEPENDENCIES])
            apply_until_ready(plane, node, docs)
            yield plane
        finally:
            node.stop()


def apply_until_ready(cluster: ControlPlane, node: Node, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    try:
        cluster.wait_for(
            lambda: all_ready(cluster), "every pod Ready", timeout=600, also=node.procs.values()
        )
    except RuntimeError as err:
        raise RuntimeError(f"{err}\n{diagnose(cluster)}") from None


def namespace_of(doc: dict[str, Any]) -> str:
    if doc["kind"] == "Namespace":
        return str(doc["metadata"]["name"])
    return str(doc["metadata"].get("namespace", ""))


def pods(cluster: ControlPlane) -> list[dict[str, Any]]:
    return [pod for ns in NAMESPACES for pod in cluster.items("pods", ns)]


def all_ready(cluster: ControlPlane) -> bool:
    deployments = [d for ns in NAMESPACES for d in cluster.items("deployments", ns)]
    return bool(deployments) and all(
        d["status"].get("readyReplicas", 0) == d["spec"]["replicas"]
        and d["status"].get("updatedReplicas", 0) == d["spec"]["replicas"]
        for d in deployments
    )


def diagnose(cluster: ControlPlane) -> str:
    """What a person would look at first: pod states, events, the last log lines."""
    lines = [cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout]
    for ns in NAMESPACES:
        lines.append(cluster.kubectl("get", "events", "-n", ns, check=False).stdout[-4000:])
    for pod in pods(cluster):
        if not any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        ):
            name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
            logs = cluster.kubectl(
                "logs", "-n", ns, name, "--all-containers", "--tail=20", check=False
            )
            lines.append(f"--- {ns}/{name}\n{logs.stdout}{logs.stderr}")
    return "\n".join(lines)


def test_pods_run_the_local_images_without_pulling(cluster: ControlPlane) -> None:
    for pod in pods(cluster):
        spec = pod["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["imagePullPolicy"] == "IfNotPresent", (
                pod["metadata"]["name"],
                container["name"],
            )
            assert container["image"].startswith("localhost/"), container["image"]
    events = [e for ns in NAMESPACES for e in cluster.items("events", ns)]
    pulls = [e["message"] for e in events if e["reason"] == "Pulling" or "pull" in e["message"]]
    assert pulls == []


def test_migrations_ran_as_init_containers(cluster: ControlPlane) -> None:
    for pod in cluster.items("pods", NAMESPACE):
        app = pod["metadata"]["labels"]["app"]
        statuses = {s["name"]: s for s in pod["status"].get("initContainerStatuses", [])}
        if app not in DATABASE_DEPLOYMENTS:
            assert statuses == {}, app
            continue
        finished = statuses["migrate"]["state"]["terminated"]
        assert (finished["exitCode"], finished["reason"]) == (0, "Completed"), app
    version = cluster.kubectl(
        "exec",
        "-n",
        "postgres",
        "deploy/postgresql",
        "--",
        "sh",
        "-c",
        'PGPASSWORD="$(cat /secrets/password)" psql -h 127.0.0.1 -U calls -d calls -tAc'
        ' "SELECT version_num FROM alembic_version"',
    ).stdout.split()
    assert version == [alembic_head()]


def alembic_head() -> str:
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "alembic"), "heads"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    heads = re.findall(r"^(\w+) \(head\)", out, re.MULTILINE)
    assert len(heads) == 1, out
    return heads[0]


def test_every_container_ran_first_time_and_is_ready(cluster: ControlPlane) -> None:
    for pod in pods(cluster):
        name = pod["metadata"]["name"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        for status in pod["status"].get("initContainerStatuses", []):
            assert status["restartCount"] == 0, (name, status)
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["restartCount"] == 0, (name, status)


@pytest.fixture(scope="module")
def envoy_service(cluster: ControlPlane) -> Iterator[str]:
    """`kubectl port-forward svc/envoy`, as the README says for the dev overlay."""
    port = free_port()
    kubectl = [str(cluster.kubectl_bin), f"--kubeconfig={cluster.kubeconfig}", "-n", NAMESPACE]
    forward = Proc(
        "port-forward",
        [*kubectl, "port-forward", "svc/envoy", f"{port}:80"],
        python_env({}),
        cluster.workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: port_open(port), "kubectl port-forward svc/envoy", 60, proc=forward)
        # Envoy is Ready before its DNS refresh (5 s) and first health check (2 s) have
        # found pods that turned Ready with it: until then it answers 503, as after any
        # cold start of the whole namespace. Every upstream answers 401 without a key.
        wait_until(lambda: front_door_up(url), "every upstream behind Envoy", 60, proc=forward)
        yield url
    finally:
        forward.stop()


def front_door_up(url: str) -> bool:
    with httpx.Client(base_url=url, timeout=5) as client:
        unauthenticated = [
            client.get("/v1/tenant/settings"),  # tenant
            client.post("/chat/rooms", json={}),  # chat
            client.post("/chat/rooms/r/calls", json={}),  # calls
        ]
        bridge = client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    return all(r.status_code == 401 for r in unauthenticated) and bridge.status_code < 500


def bootstrap_tenant(cluster: ControlPlane) -> dict[str, str]:
    """The README's first-tenant step: the bootstrap tool in a tenant pod."""
    out = cluster.kubectl(
        "exec",
        "-n",
        NAMESPACE,
        "deploy/tenant",
        "--",
        "python",
        "-m",
        "services.tenant.bootstrap",
        "--name",
        "e2e",
    ).stdout
    return dict(json.loads(out))


def ok(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def test_a_call_through_the_envoy_service(cluster: ControlPlane, envoy_service: str) -> None:
    key = bootstrap_tenant(cluster)["apiKey"]
    async with httpx.AsyncClient(base_url=envoy_service, timeout=20) as http:

        async def post(path: str, bearer: str, **body: object) -> dict[str, Any]:
            reply = await http.post(path, json=body, headers={"Authorization": f"Bearer {bearer}"})
            return ok(reply)

        alice = (await post("/v1/sessions", key, userId="alice"))["token"]
        bob = (await post("/v1/sessions", key, userId="bob"))["token"]
        room = (await post("/chat/rooms", key, members=["alice", "bob"]))["id"]
        device = await Device("bob").connect(envoy_service, bob)
        try:
            calls = f"/chat/rooms/{room}/calls"
            call = (await post(calls, alice))["call"]
            assert call["status"] == "ringing"
            invite = await device.wait_for("call.invite", call["id"], within=60)
            assert invite["call"]["id"] == call["id"]
            accepted = (await post(f"{calls}/{call['id']}/accept", bob))["call"]
            assert accepted["status"] == "active"
            ended = (await post(f"{calls}/{call['id']}/end", alice))["call"]
            assert (ended["status"], ended["endReason"]) == ("ended", "hangup")
        finally:
            await device.close()
