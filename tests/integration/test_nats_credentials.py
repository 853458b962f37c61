"""NATS credentials (with *_FILE variants) and TLS through settings, against real
nats-servers that require them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.procs import Proc, free_port, port_open, python_env, wait_until
from services.common.settings import Settings, load_settings
from services.events import types
from services.events.jetstream import connect, ensure_stream

DB = "postgresql://unused@127.0.0.1:1/unused"  # settings need one; never connected here


def _nats_server(workdir: Path, security: str) -> tuple[Proc, int]:
    """A nats-server with JetStream and the given security block of its config."""
    port = free_port()
    (workdir / "nats.conf").write_text(
        f'port: {port}\nhost: "127.0.0.1"\njetstream {{ store_dir: "{workdir / "js"}" }}\n'
        f"{security}\n"
    )
    proc = Proc(
        "nats-" + workdir.name,
        [str(Path(sys.executable).parent / "nats-server"), "-c", str(workdir / "nats.conf")],
        python_env({}),
        workdir,
    )
    wait_until(lambda: port_open(port), "nats-server", proc=proc)
    return proc, port


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A nats-server with JetStream that takes user `relay` with password `s3cret`."""
    workdir = tmp_path_factory.mktemp("nats-auth")
    proc, port = _nats_server(workdir, 'authorization { user: "relay", password: "s3cret" }')
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
    await _publishes(load_settings(ENV="test", DATABASE_URL=DB, NATS_URL=url, NATS_USER="relay"))


async def test_wrong_or_missing_credentials_are_refused(secured_nats: tuple[str, Path]) -> None:
    url, _ = secured_nats
    for extra in ({}, {"NATS_USER": "relay", "NATS_PASSWORD": "wrong"}):
        settings = load_settings(ENV="test", DATABASE_URL=DB, NATS_URL=url, **extra)
        with pytest.raises(Exception):  # noqa: B017 - nats-py's error type varies by version
            await _publishes(settings)


def _openssl(workdir: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A nats-server behind TLS with a certificate from a CA of the test's own."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    workdir = tmp_path_factory.mktemp("nats-tls")
    (workdir / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        "req -x509 -newkey rsa:2048 -nodes -days 1 -keyout ca.key -out ca.pem -subj /CN=test-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1"
        " -out server.pem -extfile san.cnf",
    ):
        _openssl(workdir, *command.split())
    proc, port = _nats_server(
        workdir, f'tls {{ cert_file: "{workdir}/server.pem", key_file: "{workdir}/server.key" }}'
    )
    yield f"tls://127.0.0.1:{port}", workdir
    proc.stop()


async def test_tls_with_the_configured_ca(tls_nats: tuple[str, Path]) -> None:
    url, workdir = tls_nats
    await _publishes(
        load_settings(
            ENV="test", DATABASE_URL=DB, NATS_URL=url, NATS_TLS_CA_FILE=str(workdir / "ca.pem")
        )
    )
    with pytest.raises(Exception):  # noqa: B017 - the system CAs do not know the test CA
        await _publishes(load_settings(ENV="test", DATABASE_URL=DB, NATS_URL=url))
