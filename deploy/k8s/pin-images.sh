#!/usr/bin/env bash
# `make pin-images REGISTRY=registry.example.com/sendsar`: pushes the images production
# runs, the application's ($IMAGE:$IMAGE_TAG, make image) and Envoy's (make server-images),
# to REGISTRY as calls:<tag> and envoy:<version>, and pins the prod overlay to them by the
# digest of the manifest each push wrote (buildah push --digestfile): it rewrites
# overlays/prod/images/kustomization.yaml, the component that holds nothing else.
#   pin-images.sh [--push-to DESTINATION] [--out FILE] REGISTRY
#     --push-to  where to push instead of docker://REGISTRY: any containers-transports
#                prefix, e.g. oci:/tmp/layouts (one OCI layout per image; the test's, no
#                registry needed). The overlay still names REGISTRY.
#     --out      the file to write instead of overlays/prod/images/kustomization.yaml
# Credentials: buildah's (`buildah login REGISTRY`). Needs root (buildah's storage).
set -euo pipefail
cd "$(dirname "$0")/../.."
push_to= out=deploy/k8s/overlays/prod/images/kustomization.yaml
while [ $# -gt 1 ]; do
  case "$1" in
    --push-to) push_to=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) break ;;
  esac
done
registry=${1:?usage: pin-images.sh [--push-to DESTINATION] [--out FILE] REGISTRY}
registry=${registry%/}
push_to=${push_to:-docker://$registry}
: "${IMAGE:?set by make}" "${IMAGE_TAG:?set by make}"
envoy=$(deploy/image/build.sh refs | tr ' ' '\n' | grep '/sendsar-envoy:')

digests=$(mktemp -d "${TMPDIR:-/tmp}/sendsar-pin.XXXXXX")
trap 'rm -rf "$digests"' EXIT
push() {  # push LOCAL_REF NAME: pushes to $push_to/NAME:<LOCAL_REF's tag>, prints the digest
  buildah push --quiet --digestfile "$digests/$2" "$1" "$push_to/$2:${1##*:}" >&2
  local digest
  digest=$(cat "$digests/$2")
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "push of $1 gave no digest: $digest" >&2; exit 1; }
  echo "$digest"
}
calls=$(push "$IMAGE:$IMAGE_TAG" calls)
envoy=$(push "$envoy" envoy)

cat >"$out" <<YAML
# The images the prod overlay runs, by digest. Written by deploy/k8s/pin-images.sh
# (make pin-images REGISTRY=...), which pushed them; edit by running it again.
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
images:
  - name: sendsar-calls
    newName: $registry/calls
    digest: $calls
  - name: envoyproxy/envoy
    newName: $registry/envoy
    digest: $envoy
YAML
echo "pinned $registry/calls@$calls and $registry/envoy@$envoy in $out"
