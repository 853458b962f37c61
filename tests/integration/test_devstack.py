"""`make dev`'s lifecycle: it says "ready" only once REST answers, every way of stopping it
leaves no process behind, and leftovers of an earlier run are reported in one line.

Each test runs its own local stack through `make dev`, on free ports in a temporary data
directory (DEV_DIR, DEV_*_PORT), without LiveKit (DEV_LIVEKIT=off), so it clashes with
neither the test stack nor a developer's `make dev`. A terminal's Ctrl-C or hang-up is
sent to make's whole process group, as a terminal does; SIGTERM only to make, as
`kill`, `timeout` without a process group, or an IDE's stop button do."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devstack import postgres
from devstack.dev import PORTS
from devstack.procs import ROOT, free_port, python_env
from tests.stack import new_workdir

pytestmark = pytest.mark.slow

NUL = b"\0"
STOP_WITHIN = 10.0
START_WITHIN = 120.0


class Run:
    """One `make dev` (or `python -m devstack.dev`) with its output collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a job in a terminal
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def output(self) -> str:
        self._drain(0)
        return "\n".join(self.lines)

    def _drain(self, timeout: float) -> bool:
        """Collects what was printed; False once the output has ended."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return True
        while line is not None:
            self.lines.append(line)
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return True
        self._queue.put(None)
        return False

    def wait_for(self, pattern: str, within: float = START_WITHIN) -> re.Match[str]:
        seen = 0
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            more = self._drain(0.2)
            for line in self.lines[seen:]:
                found = re.search(pattern, line)
                if found:
                    return found
            seen = len(self.lines)
            if not more:
                break
        raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output()[-6000:]}")

    def signal(self, sig: signal.Signals, group: bool) -> None:
        if group:
            os.killpg(self.popen.pid, sig)
        else:
            self.popen.send_signal(sig)

    def wait(self, within: float) -> int:
        try:
            code = self.popen.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running after {within} s:\n{self.output()[-6000:]}"
            ) from None
        self.output()
        return code

    def dev_lines(self) -> list[str]:
        self.output()
        return [line for line in self.lines if line.startswith("[dev]")]


class DevStack:
    """A `make dev` on free ports in a directory of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root  # stands for a checkout: `make clean` runs here
        self.dir = root / ".dev"
        self.ports = {variable: free_port() for variable in PORTS}
        ports = {variable: str(port) for variable, port in self.ports.items()}
        self.env = python_env(
            {
                "DEV_DIR": str(self.dir),
                "DEV_LIVEKIT": "off",
                "DEV_WORKERS": "1",  # free ports are picked one by one: no room for + i
                "PG_FAST": "1",
                **ports,
            }
        )
        for external in ("DATABASE_URL", "NATS_URL", "LIVEKIT_URL", "MAKEFLAGS", "MFLAGS"):
            self.env.pop(external, None)

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.ports['DEV_REST_PORT']}"

    def make_dev(self) -> Run:
        return Run(["make", "--no-print-directory", "dev"], self.env)

    def python_dev(self) -> Run:
        return Run([sys.executable, "-m", "devstack.dev"], self.env)

    def start(self) -> Run:
        run = self.make_dev()
        ready = run.wait_for(r"^\[dev\] ready in (\d+\.\d) s: REST and Socket\.IO on (\S+);")
        assert ready.group(2) == self.rest
        # The ready line comes only once REST answers: the first request after it succeeds.
        key = self.api_key()
        reply = httpx.get(
            f"{self.rest}/v1/tenant/settings", headers={"Authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200, reply.text
        assert self.processes(), "no process of the stack found"
        return run

    def stop(self, run: Run, sig: signal.Signals, *, group: bool, again: bool = False) -> float:
        """Sends the signal (twice with `again`); how long until make and every process of
        the stack are gone."""
        began = time.monotonic()
        run.signal(sig, group)
        if again:
            run.wait_for(rf"^\[dev\] {sig.name}: stopping everything", within=5)
            run.signal(sig, group)
        run.wait(STOP_WITHIN)
        while self.processes() and time.monotonic() - began < STOP_WITHIN:
            time.sleep(0.1)
        return time.monotonic() - began

    def api_key(self) -> str:
        return str(json.loads((self.dir / "demo.json").read_text())["apiKey"])

    def processes(self) -> list[str]:
        """Live processes started for this stack: they carry its DEV_DIR."""
        marker = f"DEV_DIR={self.dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in environ and stat[stat.rfind(")") + 2] not in "ZX":
                found.append(f"{entry}: {cmdline.replace(NUL, b' ').decode(errors='replace')}")
        return found

    def ports_in_use(self) -> list[int]:
        """The stack's ports something still listens on. Listeners only: another process
        of the machine may be given one of these numbers as a client's own port once the
        stack let it go, which says nothing about the stack."""
        ours = set(self.ports.values())
        return sorted(
            {
                c.laddr.port
                for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ours
            }
        )

    def assert_nothing_left(self, run: Run) -> None:
        assert self.processes() == [], run.output()[-6000:]
        assert self.ports_in_use() == [], run.output()[-6000:]

    def kill_leftovers(self) -> None:
        for line in self.processes():
            pid = int(line.split(":", 1)[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == parent:
                found.append(int(entry))
    return found


def make_clean(dev: DevStack) -> subprocess.CompletedProcess[str]:
    """`make clean` as run in a checkout whose .dev is the stack's."""
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "clean"],
        cwd=dev.root,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def dev() -> Iterator[DevStack]:
    # Not pytest's tmp_path: pytest keeps its base directory private to us, and
    # PostgreSQL runs as another user when we are root.
    stack = DevStack(new_workdir())
    try:
        yield stack
    finally:
        stack.kill_leftovers()  # only when a test failed
        shutil.rmtree(stack.root, ignore_errors=True)


def test_sigterm_to_make_stops_everything_postgres_included(dev: DevStack) -> None:
    run = dev.start()
    assert any("postgres" in line for line in dev.processes())

    took = dev.stop(run, signal.SIGTERM, group=False)

    assert took < STOP_WITHIN
    dev.assert_nothing_left(run)
    assert "[dev] SIGTERM: stopping everything" in run.dev_lines()
    assert "Traceback" not in run.output()


def test_ctrl_c_twice_kills_what_is_left_at_once(dev: DevStack) -> None:
    run = dev.start()

    took = dev.stop(run, signal.SIGINT, group=True, again=True)

    assert took < STOP_WITHIN
    dev.assert_nothing_left(run)
    assert "[dev] second Ctrl-C: killing what is left" in run.dev_lines()
    assert "Traceback" not in run.output()


def test_stop_while_starting_leaves_nothing(dev: DevStack) -> None:
    run = dev.make_dev()
    run.wait_for(r"^\[dev\] starting PostgreSQL")

    took = dev.stop(run, signal.SIGTERM, group=False)

    assert took < STOP_WITHIN
    dev.assert_nothing_left(run)
    assert not any(line.startswith("[dev] ready") for line in run.dev_lines())


def test_a_second_run_or_make_clean_on_a_running_stack_is_refused(dev: DevStack) -> None:
    first = dev.start()

    second = dev.python_dev()

    assert second.wait(30) == 1
    [supervisor] = children(first.popen.pid)  # make's one child
    assert second.dev_lines() == [
        f"[dev] make dev is already running on {dev.dir} (pid {supervisor}): "
        f"stop that one first (Ctrl-C in its terminal, or kill {supervisor})"
    ]
    cleaning = make_clean(dev)
    assert cleaning.returncode != 0
    assert "make dev is running on .dev: stop it first" in cleaning.stderr
    assert (dev.dir / "pgdata" / "PG_VERSION").exists()
    dev.stop(first, signal.SIGTERM, group=False)
    dev.assert_nothing_left(first)


def test_killing_the_supervisor_outright_still_stops_every_process(dev: DevStack) -> None:
    """SIGKILL cannot be handled: the processes stop themselves when their parent dies."""
    run = dev.python_dev()
    run.wait_for(r"^\[dev\] ready in ")

    run.signal(signal.SIGKILL, group=False)

    deadline = time.monotonic() + STOP_WITHIN
    while dev.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    dev.assert_nothing_left(run)


def test_make_clean_after_a_stop_then_start_again(dev: DevStack) -> None:
    first = dev.start()
    first_key = dev.api_key()
    dev.stop(first, signal.SIGHUP, group=True)  # the terminal was closed
    dev.assert_nothing_left(first)

    assert make_clean(dev).returncode == 0
    assert not dev.dir.exists()

    second = dev.start()
    assert any(line.startswith("[dev] demo tenant created") for line in second.dev_lines())
    assert dev.api_key() != first_key
    dev.stop(second, signal.SIGINT, group=True)
    dev.assert_nothing_left(second)


def test_a_taken_port_is_reported_in_one_line(dev: DevStack) -> None:
    port = dev.ports["DEV_REST_PORT"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        run = dev.python_dev()
        code = run.wait(30)

    assert code == 1
    [line] = run.dev_lines()
    assert line.startswith(
        f"[dev] port {port} (REST and Socket.IO) is already in use by pid {os.getpid()} ("
    ), line
    assert line.endswith(f"stop it with `kill {os.getpid()}`, or set DEV_REST_PORT to a free port")
    assert "Traceback" not in run.output()
    assert dev.processes() == []


def test_postgres_left_on_our_data_is_stopped(dev: DevStack) -> None:
    """A PostgreSQL on our data directory with no supervisor (an older make dev's, say) is
    ours: it is stopped before anything starts."""
    pgdata = dev.dir / "pgdata"
    postgres.init(pgdata)
    orphan = subprocess.Popen(
        postgres.server_command(pgdata, dev.ports["DEV_PG_PORT"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user=postgres.run_as(),
    )
    try:
        postgres.wait_ready(dev.ports["DEV_PG_PORT"])
        with socket.socket() as squatter:  # so that the run ends right after that check
            squatter.bind(("127.0.0.1", dev.ports["DEV_NATS_PORT"]))
            squatter.listen()
            run = dev.python_dev()
            assert run.wait(30) == 1

        stopped, taken = run.dev_lines()
        assert stopped == (
            f"[dev] stopping PostgreSQL (pid {orphan.pid}) left running on {pgdata} "
            "by an earlier run"
        )
        assert f"port {dev.ports['DEV_NATS_PORT']} (NATS)" in taken
        assert orphan.wait(1) == 0
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)
            orphan.wait()


def test_postgres_left_without_its_data_is_reported_then_start_works(dev: DevStack) -> None:
    """The reported case: a PostgreSQL kept running while its data directory was deleted."""
    old = dev.root / "old-pgdata"
    postgres.init(old)
    leftover = subprocess.Popen(
        postgres.server_command(old, dev.ports["DEV_PG_PORT"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user=postgres.run_as(),
    )
    try:
        postgres.wait_ready(dev.ports["DEV_PG_PORT"])
        shutil.rmtree(old)

        run = dev.python_dev()
        assert run.wait(30) == 1
        [line] = run.dev_lines()
        assert f"PostgreSQL (pid {leftover.pid})" in line, line
        assert f"data directory {old} no longer exists" in line, line
        assert f"stop it with `kill {leftover.pid}`" in line, line
        assert "Traceback" not in run.output()

        os.kill(leftover.pid, signal.SIGTERM)  # what the line says to do
        leftover.wait(STOP_WITHIN)
        again = dev.start()
        dev.stop(again, signal.SIGTERM, group=False)
        dev.assert_nothing_left(again)
    finally:
        if leftover.poll() is None:
            os.killpg(leftover.pid, signal.SIGKILL)
            leftover.wait()
