#!/usr/bin/env bash
# `make base-image`: a stand-in for python:3.11-slim for machines that cannot pull from a
# container registry. Debian bookworm (minbase, by debootstrap) with Debian's Python 3.11
# and pip, shaped like the official image where the Dockerfile relies on it: `python` on
# the PATH, pip allowed to install system-wide, CA certificates, groupadd/useradd.
# Built once per content of this script: the tag carries its hash, so an edit rebuilds.
# Needs root, debootstrap and buildah (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: base.sh IMAGE_NAME}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if buildah inspect --type image "$name" >/dev/null 2>&1; then
  echo "base image $name exists"
  exit 0
fi
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/sendsar-base.XXXXXX")
ctr=
cleanup() {
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$rootfs"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# python:3.11-slim lets pip install into the system Python; Debian marks it externally
# managed (PEP 668), which would make the Dockerfile's `pip install` refuse.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
# What an image does not need: the package cache and lists, logs, docs.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 --label org.opencontainers.image.description="Debian bookworm minbase with python3 (stand-in for python:3.11-slim)" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$name" >/dev/null
ctr=
echo "base image $name built"
