"""A small process supervisor for `make dev`: starts processes, shows their output, and
stops every one of them (and whatever they forked) whatever stops the supervisor.

Each child runs in a process group of its own, so a terminal's Ctrl-C reaches only
`make` and this supervisor, which then stops the children in order: the services
first, the processes marked `last` (PostgreSQL) after them. A child counts as
stopped only when no live process is left in its group. SIGINT, SIGTERM and SIGHUP
start a graceful stop; a second SIGINT (Ctrl-C twice) kills what is left at once.
On Linux every child also gets its stop signal if the supervisor itself dies
(PR_SET_PDEATHSIG), so not even `kill -9` of the supervisor leaves a server behind.

Single-threaded on purpose: `preexec_fn` is only safe without threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class CannotStart(Exception):
    """A reason not to (go on) start(ing), said to the user in one line."""


class Stopping(Exception):
    """A stop was requested (a signal) while starting."""


def say(message: str) -> None:
    _write(f"[dev] {message}\n")


_output_gone = False


def _write(text: str) -> None:
    """Writes to our stdout; once the terminal is gone (SIGHUP, closed pipe) stays quiet."""
    global _output_gone
    if _output_gone:
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):
        _output_gone = True


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def live_groups() -> set[int] | None:
    """Process groups with at least one live (non-zombie) process; None without /proc.

    Zombies are left out: an orphan's zombie may never be reaped where PID 1 is not an
    init, and it holds nothing."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    groups = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] not in ("Z", "X"):
            groups.add(int(fields[2]))
    return groups


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    stop_signal: signal.Signals
    kill_signals: tuple[signal.Signals, ...]
    last: bool
    buffer: bytes = b""
    kills_sent: int = 0
    next_kill: float = 0.0
    stopping: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self, groups: set[int] | None) -> bool:
        """Whether the child or anything left in its process group still runs."""
        if self.popen.poll() is None:
            return True
        if groups is not None:
            return self.pid in groups
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class Supervisor:
    def __init__(self, cwd: Path, width: int = 9) -> None:
        self.cwd = cwd
        self.width = width
        self.children: list[Child] = []
        self.selector = selectors.DefaultSelector()
        self.stop_requested: signal.Signals | None = None
        self.hurry = False  # a second Ctrl-C: no more grace
        self.hurry_said = False

    # --- signals ------------------------------------------------------------

    def handle_signals(self) -> None:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.stop_requested is None:
            self.stop_requested = sig
        elif sig == signal.SIGINT:
            # Only Ctrl-C hurries: SIGTERM and SIGHUP often arrive twice for one stop
            # (`make` forwards SIGTERM to us; a closed terminal signals every job).
            self.hurry = True

    def check_stop(self) -> None:
        if self.stop_requested is not None:
            raise Stopping(self.stop_requested.name)

    # --- starting -----------------------------------------------------------

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        kill_signals: tuple[signal.Signals, ...] = (signal.SIGKILL,),
        last: bool = False,
        stdout: Path | None = None,
        user: str | None = None,
    ) -> Child:
        """Starts a process whose output (stdout and stderr, or only stderr when stdout
        goes to a file) is shown prefixed with its name."""
        self.check_stop()
        out = stdout.open("wb") if stdout is not None else None
        try:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.PIPE,
                stderr=subprocess.PIPE if out is not None else subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(stop_signal),
                user=user,
            )
        except OSError as exc:
            raise CannotStart(f"cannot run {name} ({argv[0]}): {exc.strerror}") from None
        finally:
            if out is not None:
                out.close()
        child = Child(name, popen, stop_signal, kill_signals, last)
        pipe = popen.stderr if out is not None else popen.stdout
        assert pipe is not None
        os.set_blocking(pipe.fileno(), False)
        self.selector.register(pipe, selectors.EVENT_READ, child)
        self.children.append(child)
        return child

    def run(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        stdout: Path | None = None,
        user: str | None = None,
        check: bool = False,
    ) -> int:
        """Runs a one-off step to its end (a stop request ends it early); with `check`, a
        non-zero exit code is a reason not to go on."""
        child = self.start(name, argv, env, stdout=stdout, user=user)
        try:
            while child.popen.poll() is None:
                self.pump(0.1)
                self.check_stop()
        finally:
            self._stop([child], grace=2.0)
            self.children.remove(child)
        code = int(child.popen.returncode)
        if check and code != 0:
            raise CannotStart(f"{name} failed with code {code} (output above)")
        return code

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        """Waits for `check` while showing output; fails when a process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while not check():
            self.check_stop()
            self.check_exits()
            if time.monotonic() > deadline:
                raise CannotStart(f"{what} not ready after {timeout:.0f} s (output above)")
            self.pump(0.2)

    def check_exits(self) -> None:
        for child in self.children:
            code = child.popen.poll()
            if code is not None and not child.stopping:
                self.pump(0.2)  # its last words
                raise CannotStart(f"{child.name} exited with code {code} (output above)")

    def watch(self) -> None:
        """Shows output until a stop is requested or a process exits."""
        while True:
            self.check_stop()
            self.check_exits()
            self.pump(0.2)

    # --- output -------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            child: Child = key.data
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                data = b"\n" if child.buffer else b""
            *lines, child.buffer = (child.buffer + data).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip()
                _write(f"{child.name:<{self.width}}| {text}\n")

    # --- stopping -----------------------------------------------------------

    def stop_all(self) -> None:
        """Stops the children: the others first, then the `last` ones (PostgreSQL, which
        the others use until they are gone). Within 10 s: 4 s of grace for the others,
        2.5 s for the last ones, then their kill signals 1 s apart."""
        self._stop([c for c in self.children if not c.last], grace=4.0)
        self._stop([c for c in self.children if c.last], grace=2.5)
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]

    def _stop(self, children: list[Child], grace: float) -> None:
        now = time.monotonic()
        groups = live_groups()
        left = [c for c in children if c.running(groups)]
        for child in left:
            child.stopping = True
            child.next_kill = now + grace
            child.signal_group(child.stop_signal)
        while left:
            self.pump(0.05)
            if self.hurry and not self.hurry_said:
                say("second Ctrl-C: killing what is left")
                self.hurry_said = True
            now = time.monotonic()
            groups = live_groups()
            left = [c for c in left if c.running(groups)]
            for child in list(left):
                if child.kills_sent == len(child.kill_signals):
                    if now > child.next_kill:  # SIGKILL did not help: nothing more to do
                        say(f"{child.name} (pid {child.pid}) did not stop")
                        left.remove(child)
                elif self.hurry or now >= child.next_kill:
                    child.signal_group(child.kill_signals[child.kills_sent])
                    child.kills_sent += 1
                    child.next_kill = now + 1.0
        for child in children:
            child.stopping = True
            child.popen.poll()
