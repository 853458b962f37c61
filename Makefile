# Sendsar Calls — the two front-door commands are `make dev` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LIVEKIT_VERSION := v1.13.5
LIVEKIT_BIN := .cache/bin/livekit-server
export PYTHONPATH := $(CURDIR):$(CURDIR)/gen/python
# The wheels put nats-server and envoy in the venv's bin.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install proto k8s proto-check lint test test-fast dev bench livekit demo browsers clean ci

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Python stubs (committed) and the descriptor set Envoy's transcoder reads
# (committed too, so a clone runs without protoc). The descriptor set imports
# error_details.proto so the transcoder can render ErrorInfo details.
SITE = $(shell $(BIN)/python -c 'import site; print(site.getsitepackages()[0])')
PROTOS = $(shell cd proto && find sendsar -name '*.proto' | sort)
proto: $(STAMP)
	rm -rf gen/python/sendsar
	mkdir -p gen/python
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. -I$(SITE) \
	  --python_out=../gen/python --pyi_out=../gen/python --grpc_python_out=../gen/python $(PROTOS)
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. -I$(SITE) --include_imports \
	  --descriptor_set_out=../gen/descriptors.binpb $(PROTOS) google/rpc/error_details.proto

# Kubernetes: Envoy's config rendered for in-cluster DNS names, and the descriptor set.
k8s: proto
	$(BIN)/python -m devstack.envoy --k8s > deploy/k8s/generated/envoy.yaml
	cp gen/descriptors.binpb deploy/k8s/generated/descriptors.binpb

proto-check: k8s
	git diff --exit-code -- gen/ deploy/k8s/generated/ || (echo "generated files are stale: run make k8s and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- gen/ deploy/k8s/generated/)" || (echo "untracked generated files: run make k8s and commit" >&2; exit 1)

# buf lints an image built by protoc, because the googleapis deps would
# otherwise come from the Buf registry, which this network cannot reach.
lint: $(STAMP)
	$(BIN)/ruff check services devstack tests migrations bench
	$(BIN)/ruff format --check services devstack tests migrations bench
	$(BIN)/mypy services devstack
	mkdir -p .cache
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. -I$(SITE) --include_imports --include_source_info \
	  --descriptor_set_out=../.cache/lint-image.binpb $(PROTOS)
	npx --yes @bufbuild/buf@1.50.0 lint .cache/lint-image.binpb --path sendsar --config buf.yaml

$(LIVEKIT_BIN):
	@if command -v go >/dev/null; then \
	  mkdir -p .cache/bin && GOBIN=$(CURDIR)/.cache/gobin go install github.com/livekit/livekit-server/cmd/server@$(LIVEKIT_VERSION) \
	  && mv .cache/gobin/server $(LIVEKIT_BIN); \
	else echo "go not found: LiveKit (media) is off"; fi

livekit: $(LIVEKIT_BIN)

# The demo web app (web/demo) bundled by esbuild from the locked npm packages;
# devstack/demo.py serves it at /demo/ in `make dev` (never in deploy/k8s).
DEMO_OUT := .cache/demo
DEMO_SRC := $(wildcard web/demo/src/*.js) web/demo/index.html web/demo/style.css
demo: $(DEMO_OUT)/app.js

web/demo/node_modules/.installed: web/demo/package.json web/demo/package-lock.json
	cd web/demo && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(DEMO_OUT)/app.js: web/demo/node_modules/.installed $(DEMO_SRC)
	mkdir -p $(DEMO_OUT)
	cp web/demo/index.html web/demo/style.css $(DEMO_OUT)/
	cd web/demo && DEMO_OUT=$(CURDIR)/$(DEMO_OUT) npm run --silent build

# The browser test (tests/browser) drives Debian's Chromium through chromedriver.
browsers:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  echo "NOTE: chromium/chromedriver not found, so the browser test is skipped." \
	    "Install them with: sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2

# devstack/dev.py supervises every process and stops them all, however it is stopped.
# DEV_LIVEKIT=off: neither build nor run LiveKit.
dev: $(STAMP)
	-@if [ "$${DEV_LIVEKIT:-on}" != off ]; then $(MAKE) --no-print-directory livekit; fi
	-@$(MAKE) --no-print-directory demo
	$(BIN)/python -m devstack.dev

test: $(STAMP) livekit demo browsers
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.calls

ci: proto-check lint test

# Not under a running make dev: its PostgreSQL would go on serving deleted files.
clean:
	@if [ -e .dev/dev.lock ] && ! $(PY) -c 'import fcntl; fcntl.flock(open(".dev/dev.lock"), fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null; then \
	  echo "make dev is running on .dev: stop it first (Ctrl-C in its terminal)" >&2; exit 1; fi
	rm -rf .dev .cache/test-*
