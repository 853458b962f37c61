"""NATS credentials through settings (with *_FILE variants), against a real nats-server
that requires them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.procs import Proc, free_port, port_open, python_env, wait_until
from services.common.settings import Settings, load_settings
from services.events import types
from services.events.jetstream import connect, ensure_stream

DB = "postgresql://unused@127.0.0.1:1/unused"  # settings need one; never connected here


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A nats-server with JetStream that takes user `relay` with password `s3cret`."""
    workdir = tmp_path_factory.mktemp("nats-auth")
    port = free_port()
    (workdir / "nats.conf").write_text(
        f'port: {port}\nhost: "127.0.0.1"\njetstream {{ store_dir: "{workdir / "js"}" }}\n'
        'authorization { user: "relay", password: "s3cret" }\n'
    )
    proc = Proc(
        "nats-auth",
        [str(Path(sys.executable).parent / "nats-server"), "-c", str(workdir / "nats.conf")],
        python_env({}),
        workdir,
    )
    wait_until(lambda: port_open(port), "nats with auth", proc=proc)
    yield f"nats://127.0.0.1:{port}", workdir
    proc.stop()


async def _publishes(settings: Settings) -> None:
    nc = await asyncio.wait_for(connect(settings, "credentials-test"), 5)
    try:
        await ensure_stream(nc, settings)
        ack = await nc.jetstream().publish(types.subject("ten_x", types.INVITE), b"x")
        assert ack.stream == types.STREAM
    finally:
        await nc.close()


async def test_password_from_a_file_is_used(
    secured_nats: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, workdir = secured_nats
    secret = workdir / "password"
    secret.write_text("s3cret\n")  # as Kubernetes mounts it, trailing newline included
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(secret))
    await _publishes(load_settings(DATABASE_URL=DB, NATS_URL=url, NATS_USER="relay"))


async def test_wrong_or_missing_credentials_are_refused(secured_nats: tuple[str, Path]) -> None:
    url, _ = secured_nats
    for extra in ({}, {"NATS_USER": "relay", "NATS_PASSWORD": "wrong"}):
        settings = load_settings(DATABASE_URL=DB, NATS_URL=url, **extra)
        with pytest.raises(Exception):  # noqa: B017 - nats-py's error type varies by version
            await _publishes(settings)
