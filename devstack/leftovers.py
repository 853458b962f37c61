"""What an earlier `make dev` may have left behind, found before anything starts.

- another supervisor still running on the same data directory (a lock file);
- a PostgreSQL still running on our data directory whose supervisor is gone (an
  earlier version, or one killed with SIGKILL): ours to stop, so it is stopped;
- any port we need already taken, said in one line naming the holder when /proc
  tells us who it is (a PostgreSQL whose data directory is gone or not ours, say).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack.supervisor import CannotStart, say


@contextlib.contextmanager
def single_run(dev_dir: Path) -> Iterator[None]:
    """Held while `make dev` runs on `dev_dir`."""
    with (dev_dir / "dev.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise CannotStart(
                f"make dev is already running on {dev_dir} (pid {pid}): stop that one first "
                f"(Ctrl-C in its terminal, or kill {pid})"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _alive(pid: int) -> bool:
    if Path("/proc/self").exists():  # Linux: a zombie no one reaps is not alive
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rfind(")") + 2] not in "ZX"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop_orphan_postgres(pgdata: Path) -> None:
    """Stops a PostgreSQL serving our data directory that no supervisor owns any more."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    argv = _cmdline(pid)
    if not _alive(pid) or not argv or Path(argv[0]).name != "postgres":
        return  # a stale lock file: PostgreSQL itself handles that
    say(f"stopping PostgreSQL (pid {pid}) left running on {pgdata} by an earlier run")
    for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            return
    raise CannotStart(f"PostgreSQL (pid {pid}) on {pgdata} does not stop: kill -9 {pid}")


@dataclass(frozen=True)
class Port:
    number: int
    variable: str  # the environment variable that moves it
    what: str


def check_ports(ports: list[Port], pgdata: Path) -> None:
    taken = [port for port in ports if _taken(port.number)]
    if not taken:
        return
    also = f" (also taken: {', '.join(str(p.number) for p in taken[1:])})" if taken[1:] else ""
    raise CannotStart(_explain(taken[0], pgdata) + also)


def _taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "taken"
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _explain(port: Port, pgdata: Path) -> str:
    taken = f"port {port.number} ({port.what})"
    pid = _listener(port.number)
    if pid is None:
        return (
            f"{taken} is already in use by another program: stop it, "
            f"or set {port.variable} to a free port"
        )
    argv = _cmdline(pid)
    if argv and Path(argv[0]).name == "postgres" and "-D" in argv[:-1]:
        data = Path(argv[argv.index("-D") + 1])
        if not (data / "PG_VERSION").exists():
            return (
                f"{taken} is held by a PostgreSQL (pid {pid}) left from an earlier run "
                f"whose data directory {data} no longer exists (deleted while it ran): "
                f"stop it with `kill {pid}`, then run make dev again"
            )
        if data.resolve() != pgdata.resolve():
            return (
                f"{taken} is held by a PostgreSQL (pid {pid}) serving {data}, not {pgdata}: "
                f"stop it with `kill {pid}`, or set {port.variable} to a free port"
            )
    command = " ".join(argv)[:80] or "?"
    return (
        f"{taken} is already in use by pid {pid} ({command}): stop it with `kill {pid}`, "
        f"or set {port.variable} to a free port"
    )


def _listener(port: int) -> int | None:
    """The process listening on a loopback TCP port, found through /proc (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    pids = sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        return pid
    return None
