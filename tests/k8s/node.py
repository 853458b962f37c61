"""A real Kubernetes node on this machine for the cluster tests: Debian's containerd and
runc, the CNI bridge plugin, the kubelet deploy/k8s/e2e/build.sh built, and cluster DNS
(its CoreDNS, serving the API's Services on the bridge's address).

Everything it makes is its own and goes at stop (the logs stay): a containerd with its
root, state and socket under the node's directory, a bridge `sendsar0` (10.244.0.1/24, no
default route in the pods and no forwarding, so pod traffic never leaves the machine), the
kubelet's cgroups under /sendsar-e2e, and the pods' mounts and network namespaces.

What this kind of machine needs (cgroup v1, root without CAP_SYS_RESOURCE) is set here:
`failCgroupV1: false` and the cgroupfs driver for the kubelet, `restrict_oom_score_adj` for
containerd (the kubelet asks for OOM scores below the current one)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.procs import Proc, free_port, python_env, wait_until
from tests.k8s.cluster import ControlPlane

BRIDGE = "sendsar0"
GATEWAY = "10.244.0.1"  # the bridge's address on the host: cluster DNS listens here
POD_SUBNET = "10.244.0.0/24"
CGROUP_ROOT = "sendsar-e2e"
CGROUPS = Path("/sys/fs/cgroup")
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
NODE_NAME = "e2e-node"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for what the CRI runs


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def host_ip() -> str:
    """The address the kubelet registers (the API server reaches it there for logs, exec
    and port-forward): the source address of this machine's default route, found by a
    route lookup (nothing is sent) of a documentation address (TEST-NET-2)."""
    route = run("ip", "-json", "-4", "route", "get", "198.51.100.1").stdout
    return str(json.loads(route)[0]["prefsrc"])


@dataclass
class Node:
    cluster: ControlPlane
    workdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "ctr", f"--address={self.socket}", f"--namespace={K8S_NAMESPACE}", *args, check=check
        )

    # --- start -------------------------------------------------------------------------

    def start(self, images: list[str], pause_image: str) -> None:
        """Network, containerd with `images` loaded, DNS, then the kubelet, until the Node
        is Ready. `pause_image` is the pods' sandbox image (one of `images`)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._bridge()
        self._cgroups()
        self._containerd(pause_image)
        self.load(images)
        self._dns()
        self._kubelet()

    def _bridge(self) -> None:
        run("ip", "link", "del", BRIDGE, check=False)  # a previous run's, if it crashed
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        conf = self.workdir / "cni"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "10-sendsar.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "sendsar-e2e",
                    "plugins": [
                        {
                            # Not the gateway: the plugin would turn on IP forwarding.
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": False,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET}]],
                                "dataDir": str(self.workdir / "ipam"),
                            },
                        }
                    ],
                }
            )
        )

    def _hierarchies(self) -> list[Path]:
        """Every cgroup hierarchy: the one of cgroup v2, or each v1 controller's (and v2's
        in hybrid mode)."""
        if (CGROUPS / "cgroup.controllers").exists():
            return [CGROUPS]
        return [p for p in sorted(CGROUPS.iterdir()) if p.is_dir() and not p.is_symlink()]

    def _cgroups(self) -> None:
        for hierarchy in self._hierarchies():
            path = hierarchy / CGROUP_ROOT
            path.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":  # a cpuset cgroup takes no task before these
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (path / name).write_text((hierarchy / name).read_text())

    def _containerd(self, pause_image: str) -> None:
        base = self.workdir / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = base / "config.toml"
        config.write_text(
            f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{base / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[{cri}]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{self.workdir / "cni"}"
[{cri}.registry]
  config_path = ""
"""
        )
        proc = Proc(
            "containerd", ["containerd", f"--config={config}"], python_env({}), self.workdir
        )
        self.procs["containerd"] = proc
        wait_until(lambda: self.ctr("version").returncode == 0, "containerd", 60, proc=proc)

    def load(self, images: list[str]) -> None:
        """Images from buildah's storage into the node's containerd, through one archive
        (the layers they share, the base image's, are in it once)."""
        archive = self.workdir / "images.tar"
        run("podman", "save", "--quiet", "--multi-image-archive", f"--output={archive}", *images)
        self.ctr("images", "import", str(archive))
        archive.unlink()

    def _dns(self) -> None:
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f"""cluster.local:53 {{
    bind {GATEWAY}
    errors
    kubernetes cluster.local {{
        kubeconfig {self.cluster.kubeconfig} e2e
    }}
}}
"""
        )
        proc = Proc(
            "coredns",
            [str(self.cluster.bin / "coredns"), f"-conf={corefile}"],
            python_env({}),
            self.workdir,
        )
        self.procs["coredns"] = proc
        kubernetes = "kubernetes.default.svc.cluster.local"
        wait_until(lambda: dns_answers(GATEWAY, kubernetes), "coredns", 60, proc=proc)

    def _kubelet(self) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        resolv = self.workdir / "resolv.conf"  # the pods' upstream: none (cluster DNS only)
        resolv.write_text("")
        config = self.workdir / "kubelet.json"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # The API server's calls (logs, exec, port-forward) come from loopback
                    # without a client certificate; nothing else reaches this machine.
                    "authentication": {
                        "anonymous": {"enabled": True},
                        "webhook": {"enabled": False},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "port": free_port(),
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": free_port(),
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{CGROUP_ROOT}",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "clusterDNS": [GATEWAY],
                    "clusterDomain": "cluster.local",
                    "resolvConf": str(resolv),
                    "serializeImagePulls": False,
                    # A shared build machine's disk is often fuller than a node's: never
                    # evict or garbage-collect the images for it.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "rotateCertificates": False,
                    "registerNode": True,
                }
            )
        )
        proc = Proc(
            "kubelet",
            [
                str(self.cluster.bin / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={host_ip()}",
            ],
            python_env({}),
            self.workdir,
        )
        self.procs["kubelet"] = proc
        self.cluster.wait_for(self.ready, "the node Ready", also=self.procs.values())

    def ready(self) -> bool:
        node = self.cluster.get("node", NODE_NAME)
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
        )

    # --- stop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Everything the node made, whatever state it is in. Nothing needs a graceful end
        (the pods' data goes with the directory), so it is all killed: the kubelet, every
        process in the pods' cgroups, the containers' shims (they outlive containerd; they
        name its socket), containerd and DNS; then the mounts, the bridge, the cgroups.
        The rest is done even when finding the pods' processes fails: after one failed
        stop, a CoreDNS left behind kept answering on port 53 beside the next run's, with
        this run's pod addresses, and sent its requests to the wrong pods (and the mounts
        left behind kept the checkout from being removed)."""
        try:
            if "kubelet" in self.procs:
                self.procs["kubelet"].kill()
            deadline = time.monotonic() + 30
            while (pids := self._pod_processes() | self._shims()) and time.monotonic() < deadline:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
        finally:
            self._release()

    def _release(self) -> None:
        """The node's own processes, mounts, files, bridge and cgroups."""
        for proc in reversed(list(self.procs.values())):
            proc.kill()
        self.procs.clear()
        self._unmount()
        # The images unpacked and the pods' files (a GiB a run); the logs stay.
        for state in ("containerd", "kubelet"):
            shutil.rmtree(self.workdir / state, ignore_errors=True)
        run("ip", "link", "del", BRIDGE, check=False)
        for hierarchy in self._hierarchies():
            _remove_cgroup(hierarchy / CGROUP_ROOT)

    def _pod_processes(self) -> set[int]:
        pids: set[int] = set()
        for hierarchy in self._hierarchies():
            for cgroup in _cgroups(hierarchy / CGROUP_ROOT):
                with contextlib.suppress(OSError):
                    pids.update(int(pid) for pid in (cgroup / "cgroup.procs").read_text().split())
        return pids

    def _shims(self) -> set[int]:
        """containerd-shim processes of this node's containerd (they name its socket)."""
        address = f"-address\0{self.socket}\0".encode()
        pids: set[int] = set()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if address in (proc / "cmdline").read_bytes():
                        pids.add(int(proc.name))
        return pids

    def _unmount(self) -> None:
        """The pods' volumes, rootfs and network namespaces under the node's directory,
        deepest first."""
        base = str(self.workdir.resolve())
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(base)), key=len, reverse=True):
            run("umount", "--lazy", point, check=False)


def pause_image(binary: Path) -> str:
    """The pods' sandbox image: deploy/k8s/e2e's pause binary alone, built once per binary
    (the pause image of a registry cannot be pulled here)."""
    name = f"localhost/sendsar-pause:{hashlib.sha256(binary.read_bytes()).hexdigest()[:12]}"
    if run("buildah", "inspect", "--type", "image", name, check=False).returncode != 0:
        container = run("buildah", "from", "scratch").stdout.strip()
        try:
            run("buildah", "copy", container, str(binary), "/pause")
            run(
                "buildah",
                "config",
                "--entrypoint",
                '["/pause"]',
                "--user",
                "65535:65535",
                container,
            )
            run("buildah", "commit", "--quiet", container, name)
        finally:
            run("buildah", "rm", container, check=False)
    return name


def _cgroups(path: Path) -> list[Path]:
    """A cgroup and the ones under it, parents first. The kubelet and the shims remove
    pods' cgroups while this walks (os.walk passes over a directory gone meanwhile;
    Path.rglob raised FileNotFoundError in CI)."""
    return [Path(directory) for directory, _, _ in os.walk(path)]


def _remove_cgroup(path: Path) -> None:
    """A cgroup and the ones under it, deepest first (rmdir fails on one with tasks)."""
    for cgroup in reversed(_cgroups(path)):
        with contextlib.suppress(OSError):
            cgroup.rmdir()


def dns_answers(server: str, name: str) -> bool:
    """Whether a DNS server has an A record for the name (one raw UDP query)."""
    query_id = random.randrange(1 << 16)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.sendto(header + question + struct.pack(">HH", 1, 1), (server, 53))
        reply = sock.recv(512)
    reply_id, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    return reply_id == query_id and flags & 0xF == 0 and answers > 0
