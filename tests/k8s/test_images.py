"""The images `make image server-images` built for the cluster test: the application image
rebuilds byte for byte from the same sources and lock files (deploy/image/build.sh: fixed
timestamps, SOURCE_DATE_EPOCH), and `make pin-images` pins the prod overlay to exactly the
manifests it pushed (here into OCI layouts on disk: no registry is needed)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.procs import ROOT
from tests.k8s.cluster import rendered
from tests.k8s.conftest import Builds, workdir

# A rebuild without the layer cache (about 20 s: pip installs the lock again).
pytestmark = pytest.mark.timeout(600)


def image_id(ref: str) -> str:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = workdir("images")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def recorded(ref: str) -> dict[str, Any]:
    """What an image's ID is the digest of (its OCI config: every layer's content digest,
    the environment, the history and the creation time), less the history's comments.
    Those name the base by the local name the build used, and a layer cache filled under
    another name of the same base (its name is a hash of base.sh and the lock; its ID is
    its content) keeps that name: seen on a machine that had built an earlier base.sh."""
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref], check=True, capture_output=True, text=True
    )
    config: dict[str, Any] = json.loads(out.stdout)["OCIv1"]
    for entry in config.get("history", []):
        entry.pop("comment", None)
    return config


def test_the_app_image_rebuilds_to_the_same_content(builds: Builds) -> None:
    """Rebuilt without the layer cache, the image has the same layers (the digest of each
    one's uncompressed content: the same files, modes, owners and timestamps), the same
    history and the same creation time. With the same base name in both builds (a fresh
    machine), that is the same image ID."""
    built = builds.images["sendsar-calls"]
    repository, tag = built.rsplit(":", 1)
    rebuilt = f"{repository}:{tag}-rebuilt"
    env = {**os.environ, "IMAGE": repository, "IMAGE_TAG": f"{tag}-rebuilt"}
    try:
        # --no-cache: every layer built again, none reused from the build being compared.
        subprocess.run(
            [str(ROOT / "deploy/image/build.sh"), "app", "--no-cache"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        assert recorded(rebuilt) == recorded(built)
        assert recorded(rebuilt)["rootfs"]["diff_ids"]  # layers were compared
    finally:
        # Only the tag goes: the layers are the built image's.
        subprocess.run(["buildah", "rmi", rebuilt], capture_output=True)


def oci_manifest(layout: Path, tag: str) -> tuple[str, dict[str, object]]:
    """The digest index.json gives the tag in an OCI layout, and the manifest it names
    (checked against its digest)."""
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    algorithm, hexdigest = entry["digest"].split(":")
    blob = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == hexdigest
    return entry["digest"], json.loads(blob)


def test_pin_images_pins_the_prod_overlay_to_the_pushed_manifests(
    builds: Builds, scratch: Path
) -> None:
    """pin-images.sh pushes the application and Envoy images and writes the digests of the
    manifests it pushed into the prod overlay's images component; rendered, every
    container of prod runs one of them by digest, and each manifest is the local image
    (its config digest is the image's ID)."""
    k8s = scratch / "k8s"  # a copy of deploy/k8s: the test must not pin the checkout's
    shutil.copytree(ROOT / "deploy" / "k8s", k8s, ignore=shutil.ignore_patterns("e2e"))
    layouts = scratch / "oci"
    layouts.mkdir()
    registry = "registry.test:5000/sendsar"
    app_repository, app_tag = builds.images["sendsar-calls"].rsplit(":", 1)
    env = {**os.environ, "IMAGE": app_repository, "IMAGE_TAG": app_tag}
    subprocess.run(
        [
            str(ROOT / "deploy/k8s/pin-images.sh"),
            "--push-to",
            f"oci:{layouts}",
            "--out",
            str(k8s / "overlays/prod/images/kustomization.yaml"),
            registry,
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )

    local = {"calls": builds.images["sendsar-calls"], "envoy": builds.images["sendsar-envoy"]}
    pinned = {}
    for name, ref in local.items():
        digest, manifest = oci_manifest(layouts / name, ref.rsplit(":", 1)[1])
        config = manifest["config"]
        assert isinstance(config, dict)
        assert config["digest"] == f"sha256:{image_id(ref)}", name
        pinned[name] = f"{registry}/{name}@{digest}"

    images = set()
    for doc in yaml.safe_load_all(rendered(k8s / "overlays" / "prod", builds.kustomize)):
        pod = (doc or {}).get("spec", {}).get("template", {}).get("spec") or {}
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            images.add(container["image"])
    assert images == set(pinned.values())
    assert all(re.fullmatch(r"[^@]+@sha256:[0-9a-f]{64}", image) for image in images)
