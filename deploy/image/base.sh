#!/usr/bin/env bash
# `make base-image`: a stand-in for python:3.11-slim for machines that cannot pull from a
# container registry. Debian bookworm (minbase, by debootstrap) with Debian's Python 3.11
# and pip, shaped like the official image where the Dockerfile relies on it: `python` on
# the PATH, pip allowed to install system-wide, CA certificates, groupadd/useradd.
#   base.sh         builds it, unless it exists; fails when what debootstrap installed
#                   differs from deploy/image/base.lock
#   base.sh --lock  builds it and (re)writes base.lock from what it installed
#   base.sh --name  prints its name: localhost/sendsar-python:3.11-bookworm-<hash of this
#                   script and the lock>, so an edit of either is a new base
# Pinned: base.lock lists every installed package as name=version (architecture
# included). Older versions cannot be fetched (deb.debian.org keeps only the current
# point release and snapshot.debian.org is out of reach here), so the lock is checked, not
# installed: when Debian's bookworm moves (a point release, every two months or so) the
# build stops and says so. The image's files and history carry one fixed time, the commit
# time of this script and the lock, and its tag the hash of both (make base-image), so an
# edit of either is a new base.
# Needs root, debootstrap and buildah (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
lock_file=deploy/image/base.lock
image_name() {
  echo "localhost/sendsar-python:3.11-bookworm-$(cat deploy/image/base.sh "$lock_file" 2>/dev/null | sha256sum | cut -c1-12)"
}
mode=${1:---check}
case "$mode" in
  --name) image_name; exit 0 ;;
  --check | --lock) ;;
  *) echo "usage: $0 [--lock|--name]" >&2; exit 2 ;;
esac
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
name=$(image_name)

if [ "$mode" = --check ] && buildah inspect --type image "$name" >/dev/null 2>&1; then
  echo "base image $name exists"
  exit 0
fi
# Maintainer scripts and the timestamps written into the image use this time, not now.
if [ "$mode" = --lock ]; then
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date +%s)}
else
  SOURCE_DATE_EPOCH=$(sed -n 's/^# source-date-epoch: \([0-9]*\)$/\1/p' "$lock_file")
  [ -n "$SOURCE_DATE_EPOCH" ] || { echo "$lock_file has no source-date-epoch line" >&2; exit 1; }
fi
export SOURCE_DATE_EPOCH
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/sendsar-base.XXXXXX")
ctr=
cleanup() {
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$rootfs" "$rootfs.log" "$rootfs.lock"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; exit 1; }
chroot "$rootfs" dpkg-query --show --showformat '${Package}:${Architecture}=${Version}\n' \
  | LC_ALL=C sort >"$rootfs.lock"
if [ "$mode" = --lock ]; then
  {
    echo "# Every package of the base image (deploy/image/base.sh), as debootstrap installed it"
    echo "# from Debian bookworm. Written by \`make base-lock\`; base.sh fails when they differ."
    echo "# The time of every file in the image (written with the lock):"
    echo "# source-date-epoch: $SOURCE_DATE_EPOCH"
    cat "$rootfs.lock"
  } >"$lock_file"
  echo "wrote $lock_file ($(wc -l <"$rootfs.lock") packages)"
  name=$(image_name)
elif ! diff -u --label "$lock_file" --label "debootstrap today" <(grep -v '^#' "$lock_file") "$rootfs.lock" >"$rootfs.log"; then
  cat "$rootfs.log" >&2
  cat >&2 <<MSG
base.sh: Debian bookworm no longer has the packages $lock_file pins (above: - pinned,
+ what debootstrap installed today: a Debian point release moved them). The
old versions cannot be installed any more. Review the difference, then run
\`make base-lock\` (rebuilds the base and rewrites $lock_file) and commit the new lock:
the base image's tag and every image built on it change with it.
MSG
  # CI (BASE_LOCK=warn, set by .ci/run) goes on with today's packages: Debian's archive
  # moving must not fail every run until someone commits a new lock. A release build
  # keeps the default and stops here.
  [ "${BASE_LOCK:-strict}" = warn ] || exit 1
  echo "base.sh: BASE_LOCK=warn: building on today's packages" >&2
fi
# python:3.11-slim lets pip install into the system Python; Debian marks it externally
# managed (PEP 668), which would make the Dockerfile's `pip install` refuse.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
# What an image does not need: the package cache and lists, logs, docs; and ldconfig's
# auxiliary cache, which records inodes and change times (the one file that differed
# between two builds; ldconfig rebuilds it when it runs).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/cache/ldconfig/aux-cache

ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$rootfs" / >/dev/null
buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 --label org.opencontainers.image.description="Debian bookworm minbase with python3 (stand-in for python:3.11-slim)" \
  "$ctr"
buildah commit --quiet --rm --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$name" >/dev/null
ctr=
echo "base image $name built"
