#!/usr/bin/env bash
# The Kubernetes binaries of the cluster test, built from source with the Go module proxy
# (no release download needed): `build.sh newest` or `build.sh minimum` prints the directory
# that holds them.
#   newest/   the newest release: kube-apiserver, kube-controller-manager, kube-scheduler,
#             kubelet, kubectl, kwok, a CoreDNS with the kubernetes plugin, a pause binary
#   minimum/  the oldest release the manifests support: kube-apiserver alone (server-side
#             validation is all that runs against it), compiled without optimisation
#             (-N -l: a quarter less compile time; it serves a few dry runs)
# Each is a Go module pinning k8s.io/kubernetes with its staging modules (k8s.io/api, ...)
# replaced by their published versions, instead of the ./staging directories its own
# go.mod points at; go.sum pins every hash. Everything of one module is built by one
# `go build`, so the packages the binaries share compile once. The result is cached outside
# the checkout, keyed by the module's files, the flags and the Go version, so a rerun
# (or another clone) builds nothing.
set -euo pipefail
module=${1:?usage: build.sh newest|minimum}
here=$(cd "$(dirname "$0")" && pwd)
src=$here/$module
version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$src/go.mod")
minor=${version#v1.}
minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
gcflags=
if [ "$module" = minimum ]; then gcflags="all=-N -l"; fi
# The cache key: everything the binaries are made of (not this script's other lines, so
# editing a comment here rebuilds nothing).
key=$({ cat "$src/go.mod" "$src/go.sum"; find "$src" -name '*.go' | sort | xargs -r cat
  go env GOVERSION; echo "$gcflags $ldflags"; } | sha256sum | cut -c1-12)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/sendsar/k8s
out=$cache/$module-$version-$key
mkdir -p "$cache"
exec 9>"$cache/.$module.lock"
flock 9  # one build of a module at a time (CI's background build, a make k8s-e2e)

if [ ! -e "$out/.complete" ]; then
  echo "building Kubernetes $version ($module) into $out" >&2
  rm -rf "$out.tmp"
  start=$SECONDS
  (cd "$src" && GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    nice -n 10 go build -trimpath -gcflags "$gcflags" -ldflags "$ldflags" -o "$out.tmp/" tool)
  touch "$out.tmp/.complete"
  mv "$out.tmp" "$out"
  echo "built Kubernetes $version ($module) in $((SECONDS - start)) s" >&2
fi
# Builds of this module that no checkout has used for a week go (another branch may pin
# another release: it keeps its build while it is in use).
touch "$out"
find "$cache" -maxdepth 1 -name "$module-*" -mtime +7 ! -path "$out" -exec rm -rf {} +
echo "$out"
