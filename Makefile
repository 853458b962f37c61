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

.PHONY: install lock proto k8s k8s-check proto-check lint test test-fast dev bench livekit demo browsers openapi clean ci \
  sdk sdk-test sdk-pack base-image base-lock image image-smoke server-images k8s-e2e-build k8s-e2e pin-images

# Every package, transitive ones included, comes from the hash-pinned lock files:
# requirements/dev.txt here and in CI, requirements/lock.txt (runtime only) in the image.
# `pip check` fails when pyproject.toml asks for something the lock lacks: run make lock.
install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# Re-resolves both lock files from pyproject.toml (after changing a dependency there).
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 --generate-hashes
lock:
	test -x $(BIN)/uv || { test -x $(BIN)/python || $(PY) -m venv $(VENV); $(BIN)/python -m pip install --quiet uv==0.13.9; }
	$(UV_COMPILE) -o requirements/lock.txt
	$(UV_COMPILE) --extra dev -o requirements/dev.txt

# Python stubs (committed) and the descriptor set Envoy's transcoder reads
# (committed too, so a clone runs without protoc). The descriptor set imports
# error_details.proto so the transcoder can render ErrorInfo details.
# The client SDK's types (sdk/js/src/gen, committed too): the JSON that REST and Socket.IO
# carry, as ts-proto types only (no runtime code): lowerCamelCase fields, enum values as
# their names, timestamps as strings. Only what a client sees: calls, events, errors.
SDK := sdk/js
SDK_GEN := $(SDK)/src/gen
SDK_PROTOS := sendsar/calls/v1/calls.proto sendsar/calls/v1/events.proto \
  google/rpc/status.proto google/rpc/error_details.proto google/protobuf/any.proto
SDK_TS_PROTO_OPTS := onlyTypes=true,useJsonWireFormat=true,useOptionals=messages,enumsAsLiterals=true,$\
  unrecognizedEnum=false,outputServices=false,emitImportedFiles=false,importSuffix=.js
SITE = $(shell $(BIN)/python -c 'import site; print(site.getsitepackages()[0])')
PROTOS = $(shell cd proto && find sendsar -name '*.proto' | sort)
proto: $(STAMP) $(SDK)/node_modules/.installed
	rm -rf gen/python/sendsar
	mkdir -p gen/python
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. -I$(SITE) \
	  --python_out=../gen/python --pyi_out=../gen/python --grpc_python_out=../gen/python $(PROTOS)
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. -I$(SITE) --include_imports \
	  --descriptor_set_out=../gen/descriptors.binpb $(PROTOS) google/rpc/error_details.proto
	rm -rf $(SDK_GEN) && mkdir -p $(SDK_GEN)
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. -I$(SITE) \
	  --plugin=protoc-gen-ts_proto=../$(SDK)/node_modules/.bin/protoc-gen-ts_proto \
	  --ts_proto_out=../$(SDK_GEN) --ts_proto_opt=$(SDK_TS_PROTO_OPTS) $(SDK_PROTOS)

# Kubernetes: Envoy's config rendered for in-cluster DNS names, what each overlay ships of
# it (devstack/envoy_k8s.py: dev plain HTTP, prod TLS), and the descriptor set.
K8S_GENERATED = gen/ deploy/k8s/generated/ deploy/k8s/overlays/dev/envoy.yaml \
  deploy/k8s/overlays/prod/envoy.yaml deploy/k8s/overlays/prod/sds.yaml \
  deploy/k8s/overlays/prod/sds-grpc.yaml
k8s: proto
	$(BIN)/python -m devstack.envoy --k8s > deploy/k8s/generated/envoy.yaml
	$(BIN)/python -m devstack.envoy_k8s < deploy/k8s/generated/envoy.yaml > deploy/k8s/overlays/dev/envoy.yaml
	$(BIN)/python -m devstack.envoy_k8s --tls < deploy/k8s/generated/envoy.yaml > deploy/k8s/overlays/prod/envoy.yaml
	$(BIN)/python -m devstack.envoy_k8s --sds > deploy/k8s/overlays/prod/sds.yaml
	$(BIN)/python -m devstack.envoy_k8s --sds-grpc > deploy/k8s/overlays/prod/sds-grpc.yaml
	cp gen/descriptors.binpb deploy/k8s/generated/descriptors.binpb

proto-check: k8s
	git diff --exit-code -- $(K8S_GENERATED) $(SDK_GEN) || (echo "generated files are stale: run make k8s and commit" >&2; exit 1)
	test -z "$$(git status --porcelain -- $(K8S_GENERATED) $(SDK_GEN))" || (echo "untracked generated files: run make k8s and commit" >&2; exit 1)

# Render every overlay and check it: schema (kubernetes-validate --strict), Envoy config
# (envoy --mode validate), kube-score (deploy/k8s/check.sh lists what it ignores and why).
# The two Go tools are built once, pinned, into the user's cache (outside the checkout, so
# every clone and worktree shares them; the version is in the file name).
KUSTOMIZE_VERSION := v5.8.2
KUBE_SCORE_VERSION := v1.20.0
TOOLS_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sendsar/tools
KUSTOMIZE_BIN := $(TOOLS_CACHE)/kustomize-$(KUSTOMIZE_VERSION)
KUBE_SCORE_BIN := $(TOOLS_CACHE)/kube-score-$(KUBE_SCORE_VERSION)
# go install into a private directory, then one rename: a concurrent build of the same
# tool (CI's background jobs) never sees a half-written binary.
go_install_tool = mkdir -p $(TOOLS_CACHE) && gobin=$$(mktemp -d $(TOOLS_CACHE)/.build.XXXXXX) \
  && GOBIN=$$gobin go install $(2) && mv $$gobin/$(1) $@ && rm -rf $$gobin
$(KUSTOMIZE_BIN):
	$(call go_install_tool,kustomize,sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION))
$(KUBE_SCORE_BIN):
	$(call go_install_tool,kube-score,github.com/zegl/kube-score/cmd/kube-score@$(KUBE_SCORE_VERSION))

k8s-check: $(STAMP) $(KUSTOMIZE_BIN) $(KUBE_SCORE_BIN)
	KUSTOMIZE=$(KUSTOMIZE_BIN) KUBE_SCORE=$(KUBE_SCORE_BIN) deploy/k8s/check.sh

# The images, built by buildah without a daemon (deploy/image). FROM is BASE_IMAGE:
# python:3.11-slim where a registry is reachable
# (make image BASE_IMAGE=docker.io/library/python:3.11-slim),
# by default the stand-in `make base-image` makes from Debian, its packages pinned by
# deploy/image/base.lock (`make base-lock` rewrites it when Debian moved; its tag is the hash
# of base.sh and the lock). Reproducible: the same lock files and sources give the same
# image ID (fixed timestamps, deploy/image/epoch.sh; tests/k8s/test_images.py).
# The application image is tagged with its commit (-dirty when its sources differ from it).
LOCAL_BASE_IMAGE := $(shell deploy/image/base.sh --name)
BASE_IMAGE ?= $(LOCAL_BASE_IMAGE)
IMAGE ?= localhost/sendsar-calls
IMAGE_TAG ?= $(shell deploy/image/tag.sh)
IMAGE_ENV = BASE_IMAGE=$(BASE_IMAGE) IMAGE=$(IMAGE) IMAGE_TAG=$(IMAGE_TAG)
NEEDS_BASE = $(if $(filter $(LOCAL_BASE_IMAGE),$(BASE_IMAGE)),base-image)

base-image:
	deploy/image/base.sh

base-lock:
	deploy/image/base.sh --lock

image: $(NEEDS_BASE)
	$(IMAGE_ENV) deploy/image/build.sh app

# Runs every entry point of the image as the manifests do: non-root, read-only root.
image-smoke: image
	deploy/image/smoke.sh $(IMAGE):$(IMAGE_TAG)

# PostgreSQL, NATS and Envoy from the wheels `make dev` runs, for a cluster on this machine.
server-images: $(NEEDS_BASE)
	$(IMAGE_ENV) deploy/image/build.sh servers

# Pushes the application and Envoy images to REGISTRY (`buildah login` it first) and pins
# the prod overlay to the digests the pushes report (deploy/k8s/pin-images.sh).
pin-images: image server-images
	$(IMAGE_ENV) deploy/k8s/pin-images.sh $(REGISTRY)

# The manifests on real Kubernetes (tests/k8s): server-side validation on the oldest
# supported and the newest release, kwok nodes in three zones, a real node (containerd,
# kubelet) running the dev overlay. The binaries are built from source by
# deploy/k8s/e2e/build.sh and cached in ~/.cache/sendsar/k8s. Needs root and the Debian
# packages .ci/run installs.
k8s-e2e-build:
	deploy/k8s/e2e/build.sh newest >/dev/null
	deploy/k8s/e2e/build.sh minimum >/dev/null

k8s-e2e: $(STAMP) $(KUSTOMIZE_BIN) image server-images
	K8S_E2E_NEWEST=$$(deploy/k8s/e2e/build.sh newest) K8S_E2E_MINIMUM=$$(deploy/k8s/e2e/build.sh minimum) \
	  K8S_E2E_IMAGES="$(IMAGE):$(IMAGE_TAG) $$(deploy/image/build.sh refs)" $(IMAGE_ENV) \
	  KUSTOMIZE=$(KUSTOMIZE_BIN) \
	  $(BIN)/python -m pytest tests/k8s

# buf lints an image built by protoc, because the googleapis deps would
# otherwise come from the Buf registry, which this network cannot reach.
# The SDK and the demo app: prettier and a strict tsc (sdk/js: npm run lint).
lint: $(STAMP) $(SDK)/node_modules/.installed
	cd $(SDK) && npm run --silent lint
	$(BIN)/ruff check services devstack tests migrations bench
	$(BIN)/ruff format --check services devstack tests migrations bench
	$(BIN)/mypy services devstack tests bench
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

# The client SDK @sendsar/calls (sdk/js): tsc builds dist/ (what the package ships and the
# demo bundles) and .build/ (its tests, which tests/integration/test_sdk_js.py runs).
SDK_SRC = $(shell find $(SDK)/src $(SDK)/test -name '*.ts') $(wildcard $(SDK)/tsconfig*.json)
sdk: $(SDK)/.build/.built

$(SDK)/node_modules/.installed: $(SDK)/package.json $(SDK)/package-lock.json
	cd $(SDK) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(SDK)/.build/.built: $(SDK)/node_modules/.installed $(SDK_SRC)
	cd $(SDK) && npm run --silent build && npm run --silent build:test
	touch $@

sdk-test: sdk
	cd $(SDK) && npm test --silent

# The package as npm would publish it (CI builds it; nothing is published).
sdk-pack: sdk
	mkdir -p .cache/sdk && cd $(SDK) && npm pack --silent --pack-destination $(CURDIR)/.cache/sdk

# The demo web app (web/demo) bundled by esbuild from the locked npm packages;
# devstack/demo.py serves it at /demo/ in `make dev` (never in deploy/k8s).
DEMO_OUT := .cache/demo
DEMO_SRC := $(wildcard web/demo/src/*.js web/demo/*.html) web/demo/style.css
demo: $(DEMO_OUT)/app.js

web/demo/node_modules/.installed: web/demo/package.json web/demo/package-lock.json
	cd web/demo && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(DEMO_OUT)/app.js: web/demo/node_modules/.installed $(DEMO_SRC) $(SDK)/.build/.built
	mkdir -p $(DEMO_OUT)
	cp web/demo/*.html web/demo/style.css $(DEMO_OUT)/
	cd web/demo && DEMO_OUT=$(CURDIR)/$(DEMO_OUT) npm run --silent build

# The browser test (tests/browser) drives Debian's Chromium through chromedriver.
browsers:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  echo "NOTE: chromium/chromedriver not found, so the browser test is skipped." \
	    "Install them with: sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2


# The REST API as an OpenAPI 2 document, generated from the protos' google.api.http
# annotations, for the fuzz test (tests/integration/test_fuzz_rest.py). Without Go the
# document is missing and that test skips itself.
GATEWAY_VERSION := v2.33.0
OPENAPI_GEN := .cache/gobin/protoc-gen-openapiv2
OPENAPI_GO_PATHS = $(subst $(eval) ,,$(foreach f,$(PROTOS),,M$(f)=sendsar/$(dir $(f))))
$(OPENAPI_GEN):
	@if command -v go >/dev/null; then \
	  GOBIN=$(CURDIR)/.cache/gobin go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(GATEWAY_VERSION); \
	else echo "go not found: no OpenAPI document, the REST fuzz test is skipped"; fi

openapi: $(STAMP) $(OPENAPI_GEN)
	@if test -x $(OPENAPI_GEN); then mkdir -p .cache/openapi && cd proto && ../$(BIN)/python -m grpc_tools.protoc \
	  -I. -I$(SITE) --plugin=protoc-gen-openapiv2=../$(OPENAPI_GEN) --openapiv2_out=../.cache/openapi \
	  --openapiv2_opt=allow_merge=true,merge_file_name=sendsar,json_names_for_fields=true$(OPENAPI_GO_PATHS) \
	  $(PROTOS); fi

# devstack/dev.py supervises every process and stops them all, however it is stopped.
# DEV_LIVEKIT=off: neither build nor run LiveKit.
dev: $(STAMP)
	-@if [ "$${DEV_LIVEKIT:-on}" != off ]; then $(MAKE) --no-print-directory livekit; fi
	-@$(MAKE) --no-print-directory demo
	$(BIN)/python -m devstack.dev

test: $(STAMP) livekit demo browsers openapi sdk
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.calls

ci: proto-check lint k8s-check test sdk-pack

# Not under a running make dev: its PostgreSQL would go on serving deleted files.
clean:
	@if [ -e .dev/dev.lock ] && ! $(PY) -c 'import fcntl; fcntl.flock(open(".dev/dev.lock"), fcntl.LOCK_EX | fcntl.LOCK_NB)' 2>/dev/null; then \
	  echo "make dev is running on .dev: stop it first (Ctrl-C in its terminal)" >&2; exit 1; fi
	rm -rf .dev .cache/test-*
