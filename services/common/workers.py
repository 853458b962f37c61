"""Several worker processes of one service, so a service uses every core.

Python runs one thread of Python at a time, so a service scales up on one machine by
processes. With WORKERS=N the process started as the service becomes a small
supervisor: it runs N copies of its own command line, worker i serving gRPC on
GRPC_PORT + i (and metrics on METRICS_PORT + i), and Envoy balances over the N ports
(HTTP/2 keeps a few long-lived connections, so one shared SO_REUSEPORT port would pin
them to one or two workers). A worker that dies is started again; SIGTERM/SIGINT
stop them all, each within its own shutdown grace. Background loops (sweeps, the
relay) run in every worker: they share work through row and advisory locks.
In Kubernetes, run WORKERS=1 and scale pods instead.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from services.common.logging import log_fields
from services.common.settings import Settings

log = logging.getLogger("sendsar.workers")

RESTART_PAUSE_SECONDS = 1.0


def ports(settings: Settings) -> list[int]:
    return [settings.GRPC_PORT + i for i in range(settings.WORKERS)]


def _spawn(settings: Settings, index: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, WORKERS="1", WORKER_INDEX=str(index))
    env["GRPC_PORT"] = str(settings.GRPC_PORT + index)
    if settings.METRICS_PORT:
        env["METRICS_PORT"] = str(settings.METRICS_PORT + index)
    return subprocess.Popen([sys.executable, *sys.orig_argv[1:]], env=env)


def supervise(settings: Settings) -> int:
    """Runs the workers until SIGTERM/SIGINT; returns the exit status."""
    if settings.GRPC_PORT == 0:
        raise SystemExit("WORKERS > 1 needs an explicit GRPC_PORT (worker i listens on +i)")
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    children = {i: _spawn(settings, i) for i in range(settings.WORKERS)}
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("workers started", extra=log_fields(ports=ports(settings)))
    while not stopping:
        time.sleep(0.2)
        for index, child in list(children.items()):
            status = child.poll()
            if status is not None and not stopping:
                log.error(
                    "worker exited; restarting", extra=log_fields(worker=index, status=status)
                )
                time.sleep(RESTART_PAUSE_SECONDS)
                children[index] = _spawn(settings, index)
    deadline = time.monotonic() + settings.SHUTDOWN_GRACE_SECONDS + 5
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
