"""The client's side of authentication and TLS, end to end against a real gloomd.

trio clients run against the in-process server (`make_server`); the blocking
client and the `gloom` command against a `gloomd` process started with
`--token-file` / `--tls-cert`.  Certificates come from trustme.
"""

from __future__ import annotations

import argparse
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import gloom
from gloom._security import AuthHandshake, client_ssl_context, resolve_token
from gloomd.security import TokenError
from gloomwire.framing import encode_frame
from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
TOKEN = "client-side-secret"
GLOOM = Path(sys.executable).with_name("gloom")


@dataclass
class Certs:
    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return Certs(server_ctx, client_ctx, ca_file, cert_file, key_file)


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library reads GLOOMD_TOKEN; a developer's shell must not change the tests."""
    monkeypatch.delenv("GLOOMD_TOKEN", raising=False)


async def echo(slave: gloom.AsyncSlave, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await slave.join("echo")
    task_status.started()
    async for job in slave.jobs():
        await job.respond(job.body)


# ------------------------------------------------------------------ sans-IO pieces


def test_token_resolution_order(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(" from-file \nignored\n")
    env = {"GLOOMD_TOKEN": "from-env"}
    assert resolve_token("explicit", path, env) == "explicit"
    assert resolve_token(None, path, env) == "from-file"
    assert resolve_token(None, None, env) == "from-env"
    assert resolve_token(None, None, {}) is None
    for bad in ("", "   "):
        with pytest.raises(TokenError):
            resolve_token(bad, None, {})
    with pytest.raises(TokenError):
        resolve_token(None, None, {"GLOOMD_TOKEN": " "})
    with pytest.raises(TokenError):
        resolve_token(None, tmp_path / "missing", {})


def test_tls_context_choices(certs: Certs) -> None:
    assert client_ssl_context() is None
    assert client_ssl_context(certs.client_ctx) is certs.client_ctx
    made = client_ssl_context(tls_ca=certs.ca_file)  # a CA file implies TLS
    assert made is not None and made.verify_mode == ssl.CERT_REQUIRED and made.check_hostname


def test_auth_handshake_byte_at_a_time() -> None:
    reply = encode_frame({"ok": True}) + b"\x00\x00"
    handshake = AuthHandshake("t")
    assert handshake.request == encode_frame({"action": "auth", "token": "t"})
    done = [handshake.receive_data(reply[i : i + 1]) for i in range(len(reply) - 2)]
    assert done == [False] * (len(done) - 1) + [True]
    handshake = AuthHandshake("t")
    assert handshake.receive_data(reply)
    assert handshake.leftover == b"\x00\x00"  # handed on to the protocol, not lost


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ({"error": "unauthorized", "reason": "auth"}, gloom.Unauthorized),
        ({"error": "unauthorized", "reason": "timeout"}, gloom.Unauthorized),
        ({"error": "too_many_connections", "reason": 2}, gloom.ServerError),
        ({"id": 1, "body": 2}, gloom.ProtocolError),
        ([1, 2], gloom.ProtocolError),
    ],
)
def test_auth_handshake_refusals(frame: Any, error: type[Exception]) -> None:
    handshake = AuthHandshake("t")
    with pytest.raises(error) as info:
        handshake.receive_data(encode_frame(frame))
    if error is gloom.Unauthorized:
        assert info.value.error == "unauthorized" and info.value.reason == frame["reason"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ trio clients


async def test_trio_token_end_to_end(make_server: Any, nursery: trio.Nursery) -> None:
    server = await make_server(token=TOKEN)
    async with gloom.open_slave(HOST, server.slave_port, token=TOKEN) as slave:
        await nursery.start(echo, slave)
        async with gloom.open_master(HOST, server.master_port, token=TOKEN) as master:
            with trio.fail_after(10):
                assert await (await master.submit("echo", {"x": 1})).wait() == {"x": 1}
                assert (await master.stats())["connections"] == {"masters": 1, "slaves": 1}
        nursery.cancel_scope.cancel()


async def test_trio_wrong_or_missing_token(make_server: Any) -> None:
    server = await make_server(token=TOKEN)
    with trio.fail_after(10):
        with pytest.raises(gloom.Unauthorized) as info:
            async with gloom.open_master(HOST, server.master_port, token="wrong"):
                pass  # pragma: no cover - never entered
        assert info.value.reason == "auth"
        with pytest.raises(gloom.Unauthorized):
            async with gloom.open_slave(HOST, server.slave_port, token="wrong"):
                pass  # pragma: no cover
        # No token at all: the first request's reply is the refusal.
        async with gloom.open_master(HOST, server.master_port) as master:
            with pytest.raises(gloom.Unauthorized):
                await master.stats()
            with pytest.raises(gloom.TransportError):
                await master.stats()  # and the daemon hung up


async def test_token_from_environment_and_file(
    make_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = await make_server(token=TOKEN)
    monkeypatch.setenv("GLOOMD_TOKEN", TOKEN)
    async with gloom.open_master(HOST, server.master_port) as master:
        assert (await master.stats())["totals"]["submitted"] == 0
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    monkeypatch.setenv("GLOOMD_TOKEN", "stale")
    async with gloom.open_master(
        HOST, server.master_port, token_file=path
    ) as master:  # the file wins
        assert (await master.stats())["connections"]["masters"] == 1


async def test_auth_timeout_reported(make_server: Any) -> None:
    server = await make_server(token=TOKEN, auth_timeout=0.2)
    # A client that never authenticates learns why it was dropped.
    stream = await trio.open_tcp_stream(HOST, server.master_port)
    handshake = AuthHandshake("unused")
    with trio.fail_after(5), pytest.raises(gloom.Unauthorized) as info:
        while not handshake.receive_data(await stream.receive_some(1024)):
            pass
    assert info.value.reason == "timeout"
    await stream.aclose()


async def test_trio_tls_with_token(make_server: Any, nursery: trio.Nursery, certs: Certs) -> None:
    server = await make_server(token=TOKEN, ssl_context=certs.server_ctx)
    async with gloom.open_slave(
        HOST, server.slave_port, token=TOKEN, tls_ca=certs.ca_file
    ) as slave:
        await nursery.start(echo, slave)
        async with gloom.open_master(
            HOST, server.master_port, token=TOKEN, ssl_context=certs.client_ctx
        ) as master:
            with trio.fail_after(10):
                jobs = await master.submit_many({"type": "echo", "body": n} for n in range(50))
                assert [await job.wait() for job in jobs] == list(range(50))
        nursery.cancel_scope.cancel()


async def test_trio_tls_refusals(make_server: Any, certs: Certs) -> None:
    server = await make_server(ssl_context=certs.server_ctx)
    with trio.fail_after(10):
        # Certificate not trusted (system store only): refused during the handshake.
        with pytest.raises(gloom.TransportError, match="TLS handshake"):
            async with gloom.open_master(HOST, server.master_port, tls=True):
                pass  # pragma: no cover
        # Plaintext against a TLS-only port: the daemon closes without a frame.
        async with gloom.open_master(HOST, server.master_port) as master:
            with pytest.raises(gloom.TransportError):
                await master.stats()


async def test_slave_authenticates_again_after_reconnect(
    make_server: Any, nursery: trio.Nursery
) -> None:
    server = await make_server(token=TOKEN)
    async with gloom.open_slave(
        HOST, server.slave_port, token=TOKEN, reconnect_delay=0.01
    ) as slave:
        await nursery.start(echo, slave)
        # Drop every slave connection on the daemon side.
        for conn in list(server._connections):
            if conn.role == "slave":
                conn.abort()
        async with gloom.open_master(HOST, server.master_port, token=TOKEN) as master:
            with trio.fail_after(10):
                assert await (await master.submit("echo", "again")).wait() == "again"
        assert slave.reconnects == 1
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ blocking client and CLI


@pytest.fixture
def secured_daemon(tmp_path: Path, certs: Certs) -> Iterator[tuple[Daemon, Path]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = (
        "--token-file",
        str(token_file),
        "--tls-cert",
        str(certs.cert_file),
        "--tls-key",
        str(certs.key_file),
    )
    with spawn_gloomd(*args, env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as daemon:
        yield daemon, token_file


def test_blocking_client_tls_and_token(secured_daemon: tuple[Daemon, Path], certs: Certs) -> None:
    daemon, token_file = secured_daemon
    slave = gloom.Slave(daemon.slave_addr, timeout=10, token_file=token_file, tls_ca=certs.ca_file)
    slave.join("upper")

    def work() -> None:
        for _ in range(3):
            job = slave.job()
            slave.respond(job.body.upper())

    thread = threading.Thread(target=work)
    thread.start()
    with gloom.Master(
        daemon.master_addr, timeout=10, token=TOKEN, ssl_context=certs.client_ctx
    ) as master:
        results = sorted(
            job.body for job in master.do_many({"type": "upper", "body": b} for b in "abc")
        )
        assert results == ["A", "B", "C"]
    thread.join(10)
    slave.close()
    with pytest.raises(gloom.Unauthorized):
        gloom.Master(daemon.master_addr, timeout=10, token="nope", tls_ca=certs.ca_file)
    with pytest.raises(gloom.TransportError):
        gloom.Master(daemon.master_addr, timeout=10, token=TOKEN)  # no TLS


def run_gloom(
    daemon: Daemon, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if k != "GLOOMD_TOKEN"},
        "GLOOMD_MASTER_PORT": str(daemon.master_port),
        "GLOOMD_SLAVE_PORT": str(daemon.slave_port),
        "NO_COLOR": "1",
        **(env or {}),
    }
    return subprocess.run(
        [str(GLOOM), *args], capture_output=True, text=True, timeout=30, env=full_env, check=False
    )


def test_cli_security_flags(secured_daemon: tuple[Daemon, Path], certs: Certs) -> None:
    daemon, token_file = secured_daemon
    tls = ("--tls-ca", str(certs.ca_file))
    slave = gloom.Slave(daemon.slave_addr, timeout=10, token=TOKEN, tls_ca=certs.ca_file)
    slave.join("square")

    def work() -> None:
        job = slave.job()
        slave.respond(job.body * job.body)

    thread = threading.Thread(target=work)
    thread.start()
    done = run_gloom(daemon, "submit", "square", "12", "-q", "--token-file", str(token_file), *tls)
    assert (done.returncode, done.stdout) == (0, "144\n"), done.stderr
    thread.join(10)
    slave.close()
    # GLOOMD_TOKEN is honoured, like the daemon honours it.
    stats = run_gloom(daemon, "stats", "--json", *tls, env={"GLOOMD_TOKEN": TOKEN})
    assert stats.returncode == 0 and '"completed":1' in stats.stdout, stats.stderr
    # A wrong token is a refusal (1) with a message naming the cause.
    wrong = run_gloom(daemon, "stats", *tls, env={"GLOOMD_TOKEN": "wrong"})
    assert wrong.returncode == 1 and "unauthorized" in wrong.stderr
    # No TLS against a TLS-only daemon: the connection is lost (3).
    plain = run_gloom(daemon, "stats", "--token-file", str(token_file))
    assert plain.returncode == 3, plain.stderr
    # An empty token file is a usage error (2), before any connection.
    empty = token_file.with_name("empty")
    empty.write_text("\n")
    bad = run_gloom(daemon, "stats", "--token-file", str(empty), *tls)
    assert bad.returncode == 2 and "empty" in bad.stderr


def test_every_subcommand_has_the_security_options() -> None:
    from gloom.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"submit", "result", "cancel", "stats", "slave"} <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        flags = {opt for action in sub._actions for opt in action.option_strings}
        assert {"--token-file", "--tls", "--tls-ca"} <= flags, name
