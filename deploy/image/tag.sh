#!/usr/bin/env bash
# The application image's tag: the commit it is built from, `-dirty` when what the
# Dockerfile copies differs from that commit (so a tag never names two contents).
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=$(git rev-parse --short=12 HEAD)
if [ -n "$(git status --porcelain -- Dockerfile .dockerignore requirements/lock.txt alembic.ini migrations gen services)" ]; then
  tag="$tag-dirty"
fi
echo "$tag"
