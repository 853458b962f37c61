"""A Kubernetes control plane on loopback for the cluster tests (`make k8s-e2e`): Debian's
etcd and the kube-apiserver, kube-controller-manager and kube-scheduler that
deploy/k8s/e2e/build.sh builds from k8s.io/kubernetes. Authentication is one static admin
token; the API server makes its own self-signed serving certificate."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.procs import ROOT, Proc, free_port, python_env, wait_until

# Virtual addresses the API server hands to ClusterIP Services (nothing routes them here:
# the tests reach Services through the API server's port-forward, pods use headless names).
SERVICE_CIDR = "10.96.0.0/16"


def rendered(overlay: Path, kustomize: Path) -> str:
    """What `kubectl apply -k` would send, rendered by the pinned kustomize."""
    out = subprocess.run(
        [str(kustomize), "build", str(overlay)], check=True, capture_output=True, text=True
    )
    return out.stdout


@dataclass
class ControlPlane:
    bin: Path  # a directory deploy/k8s/e2e/build.sh printed: the server binaries
    kubectl_bin: Path  # kubectl (built with the newest release)
    release: str  # the k8s.io/kubernetes version built (v1.30.14, ...)
    workdir: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    procs: dict[str, Proc] = field(default_factory=dict)
    etcd_dir: Path | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def binary(self, name: str) -> str:
        return str(self.bin / name)

    # --- start and stop --------------------------------------------------------------

    def start(self, *, controllers: bool) -> None:
        """etcd and the API server; with `controllers`, the controller manager and the
        scheduler too (what pods need to be created, scheduled and evicted)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # etcd on tmpfs: fsync on a disk shared with other builds would slow every API call.
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.etcd_dir = Path(tempfile.mkdtemp(prefix="sendsar-etcd-", dir=shm))
        self._write_credentials()
        self._start_etcd()
        self._start_apiserver()
        if controllers:
            self._start_controllers()

    def stop(self) -> None:
        """Killed: the cluster's state goes with it, nothing needs a graceful end."""
        for proc in reversed(list(self.procs.values())):
            proc.kill()
        if self.etcd_dir is not None:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)

    def _write_credentials(self) -> None:
        (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        key = self.workdir / "service-account.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    # The serving certificate is self-signed, made at start; only loopback.
                    "clusters": [
                        {
                            "name": "e2e",
                            "cluster": {"server": self.server, "insecure-skip-tls-verify": True},
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": self.token}}],
                    "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
                    "current-context": "e2e",
                }
            )
        )

    def _start(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, python_env({}), self.workdir)
        self.procs[name] = proc
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        proc = self._start(
            "etcd",
            [
                etcd,
                "--name=e2e",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
                "--logger=zap",
                "--log-level=warn",
            ],
        )
        wait_until(lambda: self._etcd_healthy(), "etcd", timeout=60, proc=proc)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as reply:
            return bool(json.load(reply).get("health") == "true")

    def _start_apiserver(self) -> None:
        key = self.workdir / "service-account.key"
        proc = self._start(
            "kube-apiserver",
            [
                self.binary("kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.workdir / 'apiserver-pki'}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={key}",
                f"--service-account-signing-key-file={key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Its own loopback address cannot be the `kubernetes` Service's endpoint.
                "--endpoint-reconciler-type=none",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
            ],
        )
        wait_until(self.ready, "kube-apiserver", timeout=180, proc=proc)

    def ready(self) -> bool:
        out = self.kubectl("get", "--raw=/readyz", check=False, timeout=10)
        return out.returncode == 0 and out.stdout.strip() == "ok"

    def _start_controllers(self) -> None:
        kubeconfig = f"--kubeconfig={self.kubeconfig}"
        self._start(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                kubeconfig,
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self.workdir / 'service-account.key'}",
                # The HPAs act within seconds instead of the default 15 s.
                "--horizontal-pod-autoscaler-sync-period=2s",
            ],
        )
        self._start(
            "kube-scheduler",
            [self.binary("kube-scheduler"), kubeconfig, "--leader-elect=false", "--secure-port=0"],
        )
        # The service-account controller is up once the namespace "default" has its account.
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            "kube-controller-manager",
            timeout=120,
            proc=self.procs["kube-controller-manager"],
        )

    # --- kubectl ---------------------------------------------------------------------

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{out.stderr}{out.stdout}")
        return out

    def get(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def items(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return list(self.get(kind, "-n", namespace)["items"])

    def wait_for(
        self, check: Callable[[], bool], what: str, timeout: float = 180, also: Iterable[Proc] = ()
    ) -> None:
        """Polls `check` (an error counts as not yet) until it holds; fails at once, with
        its log, when a process of the control plane (or one of `also`) has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in [*self.procs.values(), *also]:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited waiting for {what}:\n{proc.tail()}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")
