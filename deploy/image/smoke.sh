#!/usr/bin/env bash
# `make image-smoke`: the image runs what the Deployments run the way they run it, as the
# image's own user (non-root), root filesystem read-only, no capabilities, no network:
# every `command` in deploy/k8s/base, every `python -m services.<name>` entry point and the
# bootstrap tool. Without configuration each must get as far as reading it (everything it
# imports is there and loads) and stop with a message naming what is missing: a non-zero
# exit, no traceback.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:?usage: smoke.sh IMAGE}
# --runtime runc: podman prefers crun, which refuses a cgroup v1/v2 hybrid host. The rlimits:
# podman asks for more open files than some hosts' hard limit, and raising one needs
# CAP_SYS_RESOURCE, which root in a container sandbox may lack; these are enough.
podman=(podman run --rm --runtime runc --network none --read-only --read-only-tmpfs=false
  --cap-drop ALL --security-opt no-new-privileges --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

uid=$("${podman[@]}" "$image" id -u)
[ "$uid" != 0 ] || { echo "FAIL: the image runs as root" >&2; exit 1; }

commands=()
while IFS= read -r line; do commands+=("$line"); done < <(
  {
    # The manifests' commands, as JSON arrays: ["python", "-m", "services.tenant"]
    grep -ho 'command: \[.*\]' deploy/k8s/base/*.yaml | sed 's/^command: \[\(.*\)\]$/\1/' | tr -d '",'
    for main in services/*/__main__.py; do
      echo "python -m $(dirname "$main" | tr / .)"
    done
    echo "python -m services.tenant.bootstrap --name smoke"
  } | sort -u
)

failed=0
for command in "${commands[@]}"; do
  # The services write only to /tmp, an emptyDir in the manifests (the migrate init
  # container has none: alembic must not need one).
  tmp=(--tmpfs /tmp:rw,size=16m)
  case "$command" in *alembic*) tmp=() ;; esac
  # shellcheck disable=SC2086  # the command's words
  if output=$("${podman[@]}" "${tmp[@]}" "$image" $command 2>&1); then
    echo "FAIL: $command exited 0 without configuration:"; echo "$output"; failed=1
  elif grep -q Traceback <<<"$output" || ! grep -q -E 'invalid configuration|is not set' <<<"$output"; then
    echo "FAIL: $command did not stop for its missing configuration:"; echo "$output"; failed=1
  else
    echo "ok: $command (uid $uid): $(grep -m1 -A1 -E 'invalid configuration|is not set' <<<"$output" | tr -s '\n ' ' ')"
  fi
done
[ "$failed" = 0 ] && echo "image smoke test: ${#commands[@]} entry points ok ($image)"
exit "$failed"
