# The one application image; each Deployment picks its service with `python -m services.<name>`.
# Dependencies come first, from the hash-pinned runtime lock, so a code change rebuilds only
# the last layers. devstack/ (the local stack) and the dev tools stay out; nothing under
# services/ imports devstack.
# BASE_IMAGE: where the registry cannot be reached, `make image` builds on the stand-in that
# `make base-image` makes from Debian (deploy/image/base.sh); pip then needs the host's CA
# bundle, which `make image` mounts for the build only.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# Set by deploy/image/build.sh (with buildah --timestamp) for a reproducible image: pip then
# writes .pyc files checked by source hash instead of mtime, useradd a fixed date.
ARG SOURCE_DATE_EPOCH
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY requirements/lock.txt requirements/lock.txt
RUN pip install --require-hashes --no-deps -r requirements/lock.txt
COPY alembic.ini ./
COPY migrations ./migrations
COPY gen ./gen
COPY services ./services
ENV PYTHONPATH=/app:/app/gen/python
USER 10001:10001
