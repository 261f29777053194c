"""`--tls-cert/--tls-key` put TLS on every port: master, slave, HTTP and websocket (wss).

A real gloomd with a certificate from a trustme CA; real clients checking it
against that CA: trio-websocket for `wss://` (its `?token=` must not travel
in clear), the gloom client for the master port, an HTTPS request for the
HTTP port.  A plaintext websocket client is closed without an answer, as a
plaintext Gloom client is.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest
import trio
import trustme
from trio_websocket import ConnectionClosed

import gloom
from tests.support import WSJOBS
from tests.support.daemon import Daemon, spawn_gloomd
from tests.support.wsclient import ws_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_daemon(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1")
    chain, key, token = folder / "chain.pem", folder / "key.pem", folder / "token"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    token.write_text("s3cret\n")
    with spawn_gloomd(
        "--tls-cert", str(chain), "--tls-key", str(key), "--token-file", str(token),
        "--ws-port", "0", "--jobs-dir", str(WSJOBS),
    ) as daemon:  # fmt: skip
        yield daemon


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def echo_over_wss(port: int, context: ssl.SSLContext | None) -> list[dict[str, object]]:
    frames = []
    with trio.fail_after(10):
        async with ws_client(port, "/?token=s3cret", ssl_context=context) as ws:
            await ws.send_message(json.dumps({"func": "echo.run", "ident": "e", "echo": "hi"}))
            try:
                while True:
                    frames.append(json.loads(await ws.get_message()))
            except ConnectionClosed:
                return frames
    raise AssertionError("unreachable")


def test_wss_with_the_daemons_certificate(tls_daemon: Daemon, ca: trustme.CA) -> None:
    assert tls_daemon.ws_port is not None
    frames = trio.run(echo_over_wss, tls_daemon.ws_port, client_context(ca))
    assert frames[-1]["result"] == "hi"


def test_plaintext_websocket_is_closed_unanswered(tls_daemon: Daemon) -> None:
    assert tls_daemon.ws_port is not None
    with socket.create_connection(("127.0.0.1", tls_daemon.ws_port), timeout=10) as raw:
        raw.sendall(
            b"GET /?token=s3cret HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert raw.recv(1024) == b""  # closed, with no HTTP answer in clear


def test_http_port_is_https(tls_daemon: Daemon, ca: trustme.CA) -> None:
    assert tls_daemon.http_port is not None
    context = client_context(ca)
    with socket.create_connection(("127.0.0.1", tls_daemon.http_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                b"Connection: close\r\n\r\n"
            )
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")


def test_master_port_is_tls(tls_daemon: Daemon, ca: trustme.CA) -> None:
    async def stats() -> dict[str, object]:
        async with gloom.open_master(
            "127.0.0.1", tls_daemon.master_port, token="s3cret", ssl_context=client_context(ca)
        ) as master:
            return await master.stats()

    assert "totals" in trio.run(stats)


def test_the_certificate_is_checked(tls_daemon: Daemon) -> None:
    """The websocket port presents the daemon's certificate: a client that
    trusts another CA refuses it."""
    assert tls_daemon.ws_port is not None

    async def handshake() -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", tls_daemon.ws_port)
        stream = trio.SSLStream(tcp, client_context(trustme.CA()), server_hostname="127.0.0.1")
        try:
            await stream.do_handshake()
        finally:
            await trio.aclose_forcefully(stream)

    with pytest.raises(trio.BrokenResourceError) as caught:
        trio.run(handshake)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
