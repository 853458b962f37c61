"""Every overlay, as rendered, accepted by a real API server of the oldest Kubernetes the
manifests support (1.30) and of the newest: `kubectl apply --dry-run=server
--validate=strict` (unknown or duplicate fields are errors), in the namespace the manifests
label for Pod Security `restricted`, with no warning (a deprecated field, or a pod template
the restricted profile would refuse, is a warning at admission)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from tests.k8s.cluster import ControlPlane, rendered
from tests.k8s.conftest import NAMESPACE, OVERLAYS, Builds, control_plane

RELEASES = ["minimum", "newest"]

# The first test also waits for the module's cluster to start (builds are cached).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module", params=RELEASES)
def api_server(request: pytest.FixtureRequest, builds: Builds) -> Iterator[ControlPlane]:
    release = str(request.param)
    with control_plane(release, builds, f"validate-{release}", controllers=False) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def namespace(api_server: ControlPlane) -> ControlPlane:
    """The namespace, created for real: the namespaced objects' dry run needs it to exist."""
    api_server.kubectl("apply", "-f", "deploy/k8s/base/namespace.yaml")
    return api_server


def test_the_server_is_the_pinned_release(api_server: ControlPlane) -> None:
    version = json.loads(api_server.kubectl("get", "--raw=/version").stdout)
    assert version["gitVersion"] == api_server.release


def test_the_namespace_enforces_pod_security_restricted(namespace: ControlPlane) -> None:
    labels = namespace.get("namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


@pytest.mark.parametrize("overlay", sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()))
def test_overlay_is_accepted_strictly_without_warnings(
    namespace: ControlPlane, builds: Builds, overlay: str
) -> None:
    manifest = rendered(OVERLAYS / overlay, builds.kustomize)
    out = namespace.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifest, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", f"the server warned:\n{out.stderr}"
    accepted = [line for line in out.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len([d for d in yaml.safe_load_all(manifest) if d]), out.stdout
