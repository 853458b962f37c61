"""The whole stack on loopback for the tests: real PostgreSQL, NATS, Envoy and services.

The engines can also run as production runs them (tests/cluster/): NATS as a JetStream
cluster (`nats_nodes=3`) and PostgreSQL as a primary with a synchronous standby
(`pg_standby=True`), the services given every server's address.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from devstack import envoy, livekit, postgres
from devstack.procs import (
    ROOT,
    Proc,
    free_port,
    free_ports,
    grpc_serving,
    http_ok,
    port_open,
    python_env,
    wait_until,
)


@dataclass
class Stack:
    workdir: Path
    pg_port: int = field(default_factory=free_port)
    nats_port: int = field(default_factory=free_port)
    # NATS's HTTP monitoring (/connz, /subsz): what the server holds for each client.
    nats_monitor_port: int = field(default_factory=free_port)
    envoy_port: int = field(default_factory=free_port)
    envoy_admin_port: int = field(default_factory=free_port)
    bridge_port: int = field(default_factory=free_port)
    livekit_port: int = field(default_factory=free_port)
    demo_port: int = field(default_factory=free_port)  # devstack/demo.py, when a test runs it
    grpc_ports: dict[str, int] = field(default_factory=dict)
    # Each gRPC service's Prometheus /metrics (worker i on the port + i).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    # Worker processes per gRPC service (each on its own port: base, base + 1, ...);
    # the call path runs two, so every test exercises several processes.
    workers: dict[str, int] = field(default_factory=lambda: {"calls": 2})
    procs: dict[str, Proc] = field(default_factory=dict)
    # Settings every process of this stack gets (on top of env()'s).
    settings: dict[str, str] = field(default_factory=dict)
    # Where LiveKit sends its webhooks (default: our intake through Envoy).
    livekit_webhook_url: str | None = None
    livekit_enabled: bool = False
    # Clustered engines: NATS servers (>1: a JetStream cluster) and a standby.
    nats_nodes: int = 1
    nats_cluster: NatsCluster | None = None
    pg_standby: bool = False
    standby_port: int = field(default_factory=free_port)
    # Extra server settings of this stack's PostgreSQL ("name=value", ...).
    postgres_settings: tuple[str, ...] = ()

    @property
    def database_url(self) -> str:
        if self.pg_standby:
            return postgres.multi_host_url([self.pg_port, self.standby_port])
        return postgres.url(self.pg_port)

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def nats_url(self) -> str:
        if self.nats_cluster is not None:
            return ",".join(self.nats_cluster.urls)
        return f"nats://127.0.0.1:{self.nats_port}"

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "ENV": "test",
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "LIVEKIT_URL": f"http://127.0.0.1:{self.livekit_port}",
            "LIVEKIT_PUBLIC_URL": f"ws://127.0.0.1:{self.livekit_port}",
            "LIVEKIT_API_TIMEOUT_SECONDS": "1",
            "OUTBOX_POLL_SECONDS": "0.5",
            "WEBHOOK_BASE_DELAY_SECONDS": "0.3",
            "DB_POOL_SIZE": "20",
            **self.settings,
            # Test receivers listen on loopback; the guard itself is tested on its own.
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        }
        base.update(extra)
        return python_env(base)

    # --- infrastructure -----------------------------------------------------

    def start_postgres(self) -> None:
        pgdata = self.workdir / "pgdata"
        postgres.init(pgdata)
        settings = postgres.primary_settings(STANDBY_NAME) if self.pg_standby else []
        self.procs["postgres"] = Proc(
            "postgres",
            postgres.server_command(pgdata, self.pg_port, *settings, *self.postgres_settings),
            python_env({}),
            self.workdir,
            user=postgres.run_as(),
        )
        postgres.wait_ready(self.pg_port)
        if self.pg_standby:
            self.start_standby()
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=self.env(),
            check=True,
        )

    def start_standby(self) -> None:
        """A streaming standby of the primary, which commits only once it has the WAL."""
        standby = self.workdir / "standby"
        postgres.clone_standby(self.pg_port, standby, STANDBY_NAME)
        self.procs["standby"] = Proc(
            "standby",
            postgres.server_command(standby, self.standby_port),
            python_env({}),
            self.workdir,
            user=postgres.run_as(),
        )
        postgres.wait_ready(self.standby_port)

    def start_nats(self) -> None:
        if self.nats_nodes > 1:
            self.nats_cluster = self.nats_cluster or NatsCluster(self.workdir, self.nats_nodes)
            self.nats_cluster.start_all()
            return
        self.procs["nats"] = Proc(
            "nats",
            [
                str(Path(sys.executable).parent / "nats-server"),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.nats_port),
                "-js",
                "-sd",
                str(self.workdir / "nats"),
                "-m",
                str(self.nats_monitor_port),
            ],
            python_env({}),
            self.workdir,
        )
        wait_until(lambda: port_open(self.nats_port), "nats", proc=self.procs["nats"])

    def stop_nats(self) -> None:
        self.procs["nats"].stop()

    def start_livekit(self) -> None:
        binary = livekit.binary()
        if binary is None:
            return
        config = self.workdir / "livekit.yaml"
        webhook_url = self.livekit_webhook_url or f"{self.rest}/livekit/webhook"
        config.write_text(livekit.config(port=self.livekit_port, webhook_url=webhook_url))
        self.procs["livekit"] = Proc(
            "livekit", livekit.command(binary, config), python_env({}), self.workdir
        )
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.livekit_port}/"),
            "livekit",
            proc=self.procs["livekit"],
        )
        self.livekit_enabled = True

    def addresses(self, name: str) -> list[str]:
        """Where a gRPC service's workers listen: its port and the next WORKERS - 1."""
        base = self.grpc_ports[name]
        return [f"127.0.0.1:{base + i}" for i in range(self.workers.get(name, 1))]

    def upstreams(self) -> envoy.Upstreams:
        """Envoy's upstreams as `make dev` has them (the demo app included)."""
        return envoy.Upstreams(
            tenant=self.addresses("tenant"),
            chat=self.addresses("chat"),
            calls=self.addresses("calls"),
            bridge=[f"127.0.0.1:{self.bridge_port}"],
            demo=f"127.0.0.1:{self.demo_port}",
        )

    def start_envoy(self) -> None:
        config = self.workdir / "envoy.yaml"
        config.write_text(
            envoy.render(
                self.upstreams(),
                listen_port=self.envoy_port,
                admin_port=self.envoy_admin_port,
                # Envoy traces into the same collector as the stack's services.
                tracing_endpoint=self.settings.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            )
        )
        self.procs["envoy"] = Proc("envoy", envoy.command(config), python_env({}), self.workdir)
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.envoy_admin_port}/ready"),
            "envoy",
            proc=self.procs["envoy"],
        )

    # --- services -------------------------------------------------------------

    def start_grpc_service(self, name: str, module: str, **extra: str) -> Proc:
        port = self.grpc_ports.setdefault(name, free_ports(self.workers.get(name, 1)))
        metrics = self.metrics_ports.setdefault(name, free_ports(self.workers.get(name, 1)))
        workers = str(self.workers.get(name, 1))
        env = {"GRPC_PORT": str(port), "METRICS_PORT": str(metrics), "WORKERS": workers, **extra}
        proc = Proc(
            name,
            [sys.executable, "-m", module],
            self.env(**env),
            self.workdir,
        )
        self.procs[name] = proc
        for address in self.addresses(name):
            wait_until(lambda a=address: grpc_serving(a), name, proc=proc)
        return proc

    def start_worker(self, name: str, module: str, ready: object = None, **extra: str) -> Proc:
        proc = Proc(name, [sys.executable, "-m", module], self.env(**extra), self.workdir)
        self.procs[name] = proc
        if ready is not None:
            wait_until(ready, name, proc=proc)
        return proc

    def start_all(self) -> None:
        self.start_postgres()
        self.start_nats()
        for port_name in ("tenant", "chat", "calls"):
            self.grpc_ports[port_name] = free_ports(self.workers.get(port_name, 1))
        self.start_envoy()
        self.start_livekit()
        self.start_grpc_service("tenant", "services.tenant")
        self.start_grpc_service("chat", "services.chat")
        self.start_grpc_service("calls", "services.calls")
        self.start_worker(
            "bridge",
            "services.socket_bridge",
            ready=lambda: http_ok(f"http://127.0.0.1:{self.bridge_port}/healthz"),
            HTTP_PORT=str(self.bridge_port),
        )
        self.start_grpc_service("webhooks", "services.webhooks")

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        if self.nats_cluster is not None:
            self.nats_cluster.stop_all()


STANDBY_NAME = "standby1"


class NatsCluster:
    """A JetStream cluster of nats-servers on loopback, every one routed to every other.
    Nodes are named n0, n1, ...; each can be killed, restarted, frozen and thawed."""

    def __init__(self, workdir: Path, size: int = 3, config: str = "") -> None:
        self.workdir = workdir
        self.config = config  # more of every node's config (accounts, permissions)
        self.ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.procs: dict[int, Proc] = {}

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    def name(self, node: int) -> str:
        return f"n{node}"

    def node(self, name: str) -> int:
        return int(name.removeprefix("n"))

    def _config(self, node: int) -> Path:
        routes = ", ".join(
            f'"nats://127.0.0.1:{port}"' for i, port in enumerate(self.route_ports) if i != node
        )
        path = self.workdir / f"nats-{self.name(node)}.conf"
        path.write_text(
            f"server_name: {self.name(node)}\n"
            f'listen: "127.0.0.1:{self.ports[node]}"\n'
            f'http: "127.0.0.1:{self.monitor_ports[node]}"\n'
            f'jetstream {{ store_dir: "{self.workdir / ("nats-" + self.name(node))}" }}\n'
            f'cluster {{ name: sendsar, listen: "127.0.0.1:{self.route_ports[node]}",'
            f" routes: [{routes}] }}\n{self.config}\n"
        )
        return path

    def start(self, node: int) -> None:
        name = f"nats-{self.name(node)}"
        self.procs[node] = Proc(
            name,
            [str(Path(sys.executable).parent / "nats-server"), "-c", str(self._config(node))],
            python_env({}),
            self.workdir,
        )
        wait_until(lambda: port_open(self.ports[node]), name, proc=self.procs[node])

    def start_all(self) -> None:
        for node in range(len(self.ports)):
            self.start(node)

    def kill(self, node: int) -> None:
        self.procs[node].kill()

    def freeze(self, node: int) -> None:
        """SIGSTOP: the process stops answering while its kernel keeps TCP up."""
        os.killpg(self.procs[node].pid, signal.SIGSTOP)

    def thaw(self, node: int) -> None:
        os.killpg(self.procs[node].pid, signal.SIGCONT)

    def stop_all(self) -> None:
        for node, proc in self.procs.items():
            if proc.alive():
                self.thaw(node)
            proc.stop()


def new_workdir() -> Path:
    cache = ROOT / ".cache"
    cache.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="test-", dir=cache))
