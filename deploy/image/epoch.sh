#!/usr/bin/env bash
# epoch.sh PATH...: the time every file and history entry of an image carries (buildah
# --timestamp, SOURCE_DATE_EPOCH): the commit time of the last commit that changed one of
# the PATHs its content is pinned by, so rebuilding the same lock files gives the same
# bytes, and a code-only commit keeps the dependency layers (and their digests) unchanged.
# $SOURCE_DATE_EPOCH, when set, wins; outside a git checkout (a source tarball), 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  echo "$SOURCE_DATE_EPOCH"
  exit 0
fi
epoch=$(git log -1 --format=%ct -- "$@" 2>/dev/null || true)
echo "${epoch:-0}"
