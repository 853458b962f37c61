#!/usr/bin/env bash
# `make k8s-check`: renders every overlay and checks what it renders.
#   1. kustomize build (the pinned kustomize make builds into ~/.cache/sendsar/tools)
#   2. kubernetes-validate --strict: every object against the Kubernetes schemas (1.30, latest)
#   3. envoy --mode validate: the Envoy config each overlay ships, with the files it
#      reads (descriptor set, SDS file) taken from the rendered ConfigMaps
#   4. kube-score, optional tests on, warnings fatal; the ignore lists below say why.
#   5. how each overlay's pods get their images: prod by digest (name@sha256:...) and
#      imagePullPolicy Always, dev IfNotPresent (images loaded into the cluster)
#   6. deploy/monitoring parses.
set -euo pipefail
cd "$(dirname "$0")/../.."
KUSTOMIZE=${KUSTOMIZE:?set by make k8s-check}
KUBE_SCORE=${KUBE_SCORE:?set by make k8s-check}
OUT=.cache/k8s
MIN_KUBERNETES=1.30.0
rm -rf "$OUT" && mkdir -p "$OUT"

# Ignored everywhere:
IGNORE_ALL=(
  # CPU is Burstable on purpose: requests are the steady load the HPAs scale on, limits
  # leave room for start-up and bursts. Memory and ephemeral storage requests do equal
  # their limits (checked), so no pod is OOM-killed for a neighbour's usage.
  container-cpu-requests-equal-limits
  # The same CPU check, bundled with memory (which passes on its own, see above).
  container-resource-requests-equal-limits
)
# Ignored for the dev overlay only:
IGNORE_DEV=(
  # One replica of everything on a laptop cluster (its HPAs start at 1).
  horizontalpodautoscaler-replicas
  # Its images are built locally and loaded into the cluster, not pulled: IfNotPresent.
  container-image-pull-policy
)
OPTIONAL=(
  container-memory-requests-equal-limits
  container-ephemeral-storage-request-equals-limit
  container-ports-check
  container-seccomp-profile
)

for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  rendered="$OUT/$name.yaml"
  echo "== $name"
  "$KUSTOMIZE" build "$overlay" > "$rendered"
  # The oldest Kubernetes the manifests support (preStop `sleep`, gRPC probes) and the newest.
  .venv/bin/kubernetes-validate --strict --quiet -k "$MIN_KUBERNETES" "$rendered"
  .venv/bin/kubernetes-validate --strict --quiet "$rendered"

  # The Envoy config as mounted: /etc/envoy holds the envoy-config and envoy-descriptors
  # ConfigMaps, so validate with both written under a scratch /etc/envoy.
  etc="$OUT/$name-etc"
  .venv/bin/python - "$rendered" "$etc" <<'PY'
import base64, sys
from pathlib import Path
import yaml
rendered, etc = sys.argv[1], Path(sys.argv[2])
(etc / "envoy").mkdir(parents=True)
for doc in yaml.safe_load_all(Path(rendered).read_text()):
    if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("envoy-"):
        for key, text in (doc.get("data") or {}).items():
            (etc / "envoy" / key).write_text(text.replace("/etc/envoy/", f"{etc.resolve()}/envoy/"))
        for key, data in (doc.get("binaryData") or {}).items():
            (etc / "envoy" / key).write_bytes(base64.b64decode(data))
PY
  .venv/bin/envoy --mode validate -c "$etc/envoy/envoy.yaml" --log-level error --disable-hot-restart

  ignore=("${IGNORE_ALL[@]}")
  if [ "$name" = dev ]; then ignore+=("${IGNORE_DEV[@]}"); fi
  "$KUBE_SCORE" score --exit-one-on-warning --output-format ci \
    $(printf -- '--enable-optional-test %s ' "${OPTIONAL[@]}") \
    $(printf -- '--ignore-test %s ' "${ignore[@]}") \
    "$rendered" | { grep -v '^\[OK\]' || true; }
  # (the pipe hides kube-score's OK lines; its exit status still decides)
  test "${PIPESTATUS[0]}" -eq 0

  # Every container and init container: prod by digest and pulled at each start, dev
  # never pulled (kube-score checks neither the digest nor, for dev, the policy).
  .venv/bin/python - "$rendered" "$name" <<'PY'
import re
import sys
import yaml
rendered, overlay = sys.argv[1], sys.argv[2]
policy = {"prod": "Always", "dev": "IfNotPresent"}.get(overlay)
bad = []
for doc in yaml.safe_load_all(open(rendered)):
    spec = (doc or {}).get("spec") or {}
    pod = (spec.get("jobTemplate", {}).get("spec") or spec).get("template", {}).get("spec")
    for c in (pod or {}).get("initContainers", []) + (pod or {}).get("containers", []):
        where = f'{doc["kind"]}/{doc["metadata"]["name"]} container {c["name"]}'
        if policy and c.get("imagePullPolicy") != policy:
            bad.append(f"{where}: imagePullPolicy {c.get('imagePullPolicy')}, want {policy}")
        if overlay == "prod" and not re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", c["image"]):
            bad.append(f"{where}: {c['image']} is not pinned by digest (name@sha256:<64 hex>)")
if bad:
    sys.exit(f"{overlay}: image references:\n  " + "\n  ".join(bad))
PY
done
# The monitoring files parse, and every alert has an expression and a severity.
.venv/bin/python - <<'PY'
import json
import yaml
json.load(open("deploy/monitoring/grafana-dashboard.json"))
for group in yaml.safe_load(open("deploy/monitoring/alerts.yaml"))["groups"]:
    for rule in group["rules"]:
        assert rule["expr"] and rule["labels"]["severity"], rule["alert"]
PY
echo "k8s-check: all overlays render, validate and score clean"
