"""The production overlay on a simulated cluster: the newest API server, controller manager
and scheduler with six kwok nodes in three zones (deploy/k8s/e2e/kwok.yaml plays their
kubelets). The HPAs bring every Deployment to its replicas, the pods are admitted under Pod
Security `restricted` and spread over zones and nodes, and draining two nodes at once keeps
every PodDisruptionBudget: while no replacement can start, the second eviction of a
Deployment is refused until its first replacement is ready."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from devstack.procs import Proc, python_env
from tests.k8s.cluster import ControlPlane, rendered
from tests.k8s.conftest import E2E, NAMESPACE, OVERLAYS, Builds, control_plane

ZONES = ("zone-a", "zone-b", "zone-c")
NODES = [f"{zone}-{i}" for zone in ZONES for i in (1, 2)]
ZONE_LABEL = "topology.kubernetes.io/zone"
# kubectl drain's line for an eviction the API server refused (429) for a budget:
# error when evicting pods/"calls-…" -n "sendsar-calls" (will retry after 5s): Cannot evict
# pod as it would violate the pod's disruption budget.
PDB_REFUSAL = re.compile(r'evicting pods/"calls-[^"]+".*violate the pod\'s disruption budget')

# The first test also waits for the module's cluster to start (builds are cached).
pytestmark = pytest.mark.timeout(600)


def kwok_node(name: str) -> dict[str, Any]:
    zone = name.rsplit("-", 1)[0]
    resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                ZONE_LABEL: zone,
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }


@pytest.fixture(scope="module")
def cluster(builds: Builds) -> Iterator[ControlPlane]:
    with control_plane("newest", builds, "kwok", controllers=True) as plane:
        plane.procs["kwok"] = Proc(
            "kwok",
            [
                str(builds.newest / "kwok"),
                f"--kubeconfig={plane.kubeconfig}",
                f"--config={E2E / 'kwok.yaml'}",
            ],
            python_env({}),
            plane.workdir,
        )
        nodes = {"apiVersion": "v1", "kind": "List", "items": [kwok_node(n) for n in NODES]}
        plane.kubectl("apply", "-f", "-", stdin=json.dumps(nodes))
        plane.wait_for(lambda: len(ready_nodes(plane)) == len(NODES), "kwok nodes ready")
        plane.kubectl("apply", "-f", "-", stdin=rendered(OVERLAYS / "prod", builds.kustomize))
        plane.wait_for(lambda: all_at_replicas(plane), "every Deployment at its replicas")
        yield plane


def ready_nodes(cluster: ControlPlane) -> list[str]:
    return [
        node["metadata"]["name"]
        for node in cluster.get("nodes")["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    ]


def deployments(cluster: ControlPlane) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in cluster.items("deployments", NAMESPACE)}


def hpa_minimum(cluster: ControlPlane) -> dict[str, int]:
    return {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"]
        for h in cluster.items("hpa", NAMESPACE)
    }


def all_at_replicas(cluster: ControlPlane) -> bool:
    minimum = hpa_minimum(cluster)
    return all(
        d["spec"]["replicas"] == minimum.get(name)
        and d["status"].get("readyReplicas") == d["spec"]["replicas"]
        and d["status"].get("updatedReplicas") == d["spec"]["replicas"]
        for name, d in deployments(cluster).items()
    )


def ready_pods(cluster: ControlPlane) -> list[dict[str, Any]]:
    """Pods that are ready and not on their way out."""
    return [
        pod
        for pod in cluster.items("pods", NAMESPACE)
        if "deletionTimestamp" not in pod["metadata"]
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
    ]


def placement(cluster: ControlPlane) -> dict[str, list[str]]:
    """app -> the nodes its ready pods run on."""
    nodes: dict[str, list[str]] = {}
    for pod in ready_pods(cluster):
        nodes.setdefault(pod["metadata"]["labels"]["app"], []).append(pod["spec"]["nodeName"])
    return nodes


def zone(node: str) -> str:
    return node.rsplit("-", 1)[0]


def assert_spread(cluster: ControlPlane, avoid: tuple[str, ...] = ()) -> None:
    for app, nodes in placement(cluster).items():
        assert len(set(nodes)) == len(nodes), f"{app}: two replicas on one node: {nodes}"
        zones = [zone(n) for n in nodes]
        assert len(set(zones)) == len(zones), f"{app}: two replicas in one zone: {nodes}"
        assert not set(nodes) & set(avoid), f"{app} still on a drained node: {nodes}"


def test_every_deployment_reaches_its_replicas(cluster: ControlPlane, builds: Builds) -> None:
    minimum = hpa_minimum(cluster)
    manifest = rendered(OVERLAYS / "prod", builds.kustomize)
    expected = {
        d["metadata"]["name"] for d in yaml.safe_load_all(manifest) if d["kind"] == "Deployment"
    }
    found = deployments(cluster)
    assert set(found) == expected
    for name, deployment in found.items():
        assert deployment["status"]["readyReplicas"] == minimum[name] >= 2, name
    # Every pod was admitted by Pod Security `restricted` (enforced): none refused.
    events = cluster.items("events", NAMESPACE)
    refused = [e["message"] for e in events if e["reason"] == "FailedCreate"]
    assert refused == []


def test_hpas_bind_to_their_targets(cluster: ControlPlane) -> None:
    found = deployments(cluster)
    hpas = cluster.items("hpa", NAMESPACE)
    assert sorted(h["spec"]["scaleTargetRef"]["name"] for h in hpas) == sorted(found)
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        conditions = {c["type"]: c for c in hpa["status"]["conditions"]}
        # The HPA reads and sets the Deployment's scale subresource. (No metrics-server here,
        # so ScalingActive is False: scaling on CPU is not part of this test.)
        assert conditions["AbleToScale"]["status"] == "True", (target, conditions)
        assert hpa["status"]["currentReplicas"] == found[target["name"]]["spec"]["replicas"]


def test_replicas_spread_over_zones_and_nodes(cluster: ControlPlane) -> None:
    assert set(placement(cluster)) == set(deployments(cluster))
    assert_spread(cluster)


def test_draining_two_nodes_keeps_every_disruption_budget(cluster: ControlPlane) -> None:
    """calls' two nodes drained at once while the scheduler is paused (no replacement can
    start): one calls pod is evicted, the other eviction is refused while its replacement
    is pending; once the scheduler is back both drains finish and the spread holds on the
    nodes left."""
    drained = tuple(sorted(placement(cluster)["calls"]))
    lowest: Counter[str] = Counter({app: 2 for app in deployments(cluster)})
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            now = placement(cluster)
            for app in lowest:
                lowest[app] = min(lowest[app], len(now.get(app, [])))
            time.sleep(0.2)

    scheduler = cluster.procs["kube-scheduler"].pid
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    os.kill(scheduler, signal.SIGSTOP)
    drains = [
        subprocess.Popen(
            [
                str(cluster.kubectl_bin),
                f"--kubeconfig={cluster.kubeconfig}",
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=300s",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in drained
    ]
    outputs = [""] * len(drains)
    try:
        readers = [
            threading.Thread(target=_collect, args=(drain, outputs, i), daemon=True)
            for i, drain in enumerate(drains)
        ]
        for reader in readers:
            reader.start()
        cluster.wait_for(lambda: refused(outputs), "a calls eviction refused", 120)
        assert cluster.get("pdb", "calls", "-n", NAMESPACE)["status"]["disruptionsAllowed"] == 0
        assert len(placement(cluster).get("calls", [])) == 1  # the refused one still serves
        os.kill(scheduler, signal.SIGCONT)
        for drain in drains:
            assert drain.wait(timeout=300) == 0, "\n".join(outputs)
        for reader in readers:
            reader.join(timeout=10)
    finally:
        os.kill(scheduler, signal.SIGCONT)
        watching.clear()
        watcher.join(timeout=10)
        for drain in drains:
            if drain.poll() is None:
                drain.kill()
    cluster.wait_for(lambda: all_at_replicas(cluster), "every Deployment back at its replicas")
    # maxUnavailable 1 of 2: never fewer than one ready pod of anything.
    assert min(lowest.values()) >= 1, lowest
    assert_spread(cluster, avoid=drained)


def refused(outputs: list[str]) -> bool:
    return PDB_REFUSAL.search("".join(outputs)) is not None


def _collect(drain: subprocess.Popen[str], outputs: list[str], index: int) -> None:
    assert drain.stdout is not None
    for line in drain.stdout:
        outputs[index] += line
