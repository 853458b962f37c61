"""The cluster tests run under `make k8s-e2e`, which builds what they need (the Kubernetes
binaries, the images) and names it in the environment; elsewhere they skip. They need root
and the Debian packages .ci/run installs (etcd-server, containerd, runc, CNI plugins,
buildah)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.procs import ROOT
from tests.k8s.cluster import ControlPlane

OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
E2E = ROOT / "deploy" / "k8s" / "e2e"
NAMESPACE = "sendsar-calls"


@dataclass(frozen=True)
class Builds:
    newest: Path  # deploy/k8s/e2e/build.sh newest
    minimum: Path  # deploy/k8s/e2e/build.sh minimum
    kustomize: Path
    images: dict[str, str]  # repository's last path part (sendsar-calls, ...) -> reference

    @property
    def kubectl(self) -> Path:
        return self.newest / "kubectl"


@pytest.fixture(scope="session")
def builds() -> Builds:
    env = {k: os.environ.get(k, "") for k in ("K8S_E2E_NEWEST", "K8S_E2E_MINIMUM", "KUSTOMIZE")}
    if not all(env.values()):
        pytest.skip("the cluster tests run under `make k8s-e2e` (root, builds, apt packages)")
    if os.geteuid() != 0:
        pytest.skip("the cluster tests need root (containerd, kubelet, CNI)")
    images = {
        ref.rsplit(":", 1)[0].rsplit("/", 1)[-1]: ref
        for ref in os.environ.get("K8S_E2E_IMAGES", "").split()
    }
    return Builds(
        newest=Path(env["K8S_E2E_NEWEST"]),
        minimum=Path(env["K8S_E2E_MINIMUM"]),
        kustomize=Path(env["KUSTOMIZE"]),
        images=images,
    )


def workdir(name: str) -> Path:
    cache = ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"test-k8s-{name}-", dir=cache))


def pinned_release(module: str) -> str:
    """The k8s.io/kubernetes version deploy/k8s/e2e/<module>/go.mod pins (v1.30.14, ...)."""
    for line in (E2E / module / "go.mod").read_text().splitlines():
        words = line.split()  # "k8s.io/kubernetes v1.30.14 // indirect"
        if len(words) >= 2 and words[0] == "k8s.io/kubernetes":
            return words[1]
    raise AssertionError(f"{module}/go.mod does not require k8s.io/kubernetes")


@contextmanager
def control_plane(
    module: str, builds: Builds, name: str, *, controllers: bool
) -> Iterator[ControlPlane]:
    """A started control plane of a release (newest, minimum), stopped after the module."""
    cluster = ControlPlane(
        bin=getattr(builds, module),
        kubectl_bin=builds.kubectl,
        release=pinned_release(module),
        workdir=workdir(name),
    )
    try:
        cluster.start(controllers=controllers)
        yield cluster
    finally:
        cluster.stop()
