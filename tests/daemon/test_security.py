"""Authentication, TLS and abuse limits, against a real server on 127.0.0.1."""

from __future__ import annotations

import ssl
import struct
import subprocess
import sys

import pytest
import trio
import trustme

from gloomd.cli import _is_loopback
from gloomd.security import TokenError, load_token, server_ssl_context
from tests.support.daemon import spawn_gloomd
from tests.support.wire import Peer, frame

pytestmark = pytest.mark.timeout(30)

TOKEN = "s3cret-token"


async def expect_close(peer: Peer, expected: dict) -> None:
    with trio.fail_after(5):
        assert await peer.recv() == expected
        assert await peer.recv_eof()


# ------------------------------------------------------------------ token


@pytest.mark.parametrize("port_name", ["master_port", "slave_port"])
async def test_token_required_first(make_server, port_name: str) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(token=TOKEN)
    peer = await Peer.connect(getattr(server, port_name))
    await peer.send({"action": "stats"})
    await expect_close(peer, {"error": "unauthorized", "reason": "auth"})


async def test_wrong_token_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(token=TOKEN)
    peer = await Peer.connect(server.master_port)
    await peer.send({"action": "auth", "token": TOKEN + "x"})
    await expect_close(peer, {"error": "unauthorized", "reason": "auth"})
    peer = await Peer.connect(server.master_port)
    await peer.send({"action": "auth", "token": 12345})
    await expect_close(peer, {"error": "unauthorized", "reason": "auth"})


async def test_right_token_then_normal_traffic(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(token=TOKEN)
    slave = await Peer.connect(server.slave_port)
    master = await Peer.connect(server.master_port)
    # Auth and the first real frame may come in one packet.
    await slave.send_raw(
        frame({"action": "auth", "token": TOKEN}) + frame({"action": "join", "type": "t"})
    )
    assert await slave.recv() == {"ok": True}
    assert await slave.recv() == {"ok": True}
    assert await master.request({"action": "auth", "token": TOKEN}) == {"ok": True}
    assert await master.request({"action": "submit", "id": 1, "type": "t", "body": 2}) == {
        "ok": True,
        "id": 1,
    }
    assert (await slave.recv())["body"] == 2
    # A later auth frame is harmless.
    assert await master.request({"action": "auth", "token": TOKEN}) == {"ok": True}


async def test_auth_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(token=TOKEN, auth_timeout=0.3)
    peer = await Peer.connect(server.master_port)
    await expect_close(peer, {"error": "unauthorized", "reason": "timeout"})


async def test_auth_without_token_configured_is_ok(gloomd_server) -> None:  # type: ignore[no-untyped-def]
    peer = await Peer.connect(gloomd_server.slave_port)
    assert await peer.request({"action": "auth", "token": "anything"}) == {"ok": True}


async def test_oversized_first_frame_still_gets_size_error(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(token=TOKEN, max_frame=100)
    peer = await Peer.connect(server.master_port)
    await peer.send_raw(struct.pack(">I", 101))
    await expect_close(peer, {"error": "size_error", "reason": "length too large"})


def test_token_loading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "token"
    path.write_text("  abc  \nsecond line ignored\n")
    assert load_token(path, {}) == "abc"
    assert load_token(path, {"GLOOMD_TOKEN": "env"}) == "abc"  # the file wins
    assert load_token(None, {"GLOOMD_TOKEN": " env "}) == "env"
    assert load_token(None, {}) is None
    path.write_text("   \n")
    with pytest.raises(TokenError):
        load_token(path, {})
    with pytest.raises(TokenError):
        load_token(None, {"GLOOMD_TOKEN": ""})
    with pytest.raises(TokenError):
        load_token(tmp_path / "missing", {})


def test_empty_token_stops_startup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "token"
    path.write_text("\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gloomd",
            "--master-port",
            "0",
            "--slave-port",
            "0",
            "--token-file",
            str(path),
        ],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert b"empty" in proc.stderr


def test_daemon_with_token_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    with spawn_gloomd("--token-file", str(path)) as daemon:
        with socket.create_connection(daemon.master_addr, timeout=10) as sock:
            sock.sendall(frame({"action": "auth", "token": TOKEN}) + frame({"action": "stats"}))
            data = b""
            while data.count(b"}") < 2 or b"stats" not in data:
                data += sock.recv(65536)
            assert b'{"ok":true}' in data and b'"stats"' in data


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert (
        not _is_loopback("0.0.0.0")
        and not _is_loopback("10.1.2.3")
        and not _is_loopback("example.org")
    )


# ------------------------------------------------------------------ abuse limits


async def test_slow_frame_is_cut_off(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(frame_timeout=0.3)
    peer = await Peer.connect(server.master_port)
    await peer.send_raw(struct.pack(">I", 40) + b'{"action":')
    await expect_close(peer, {"error": "frame_timeout", "reason": 0.3})


async def test_idle_connection_between_frames_is_not_cut_off(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(frame_timeout=0.3)
    peer = await Peer.connect(server.master_port)
    assert (await peer.request({"action": "stats"}))["ok"]
    # Idle well past the frame timeout, with no frame started: still served.
    await trio.sleep(0.6)  # the point of the test is elapsed idle time, not waiting for state
    assert (await peer.request({"action": "stats"}))["ok"]


async def test_connections_per_host_cap(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(max_per_host=2)
    a = await Peer.connect(server.master_port)
    b = await Peer.connect(server.slave_port)
    assert (await a.request({"action": "stats"}))["ok"]
    assert await b.request({"action": "join", "type": "t"}) == {"ok": True}
    c = await Peer.connect(server.master_port)
    await expect_close(c, {"error": "too_many_connections", "reason": 2})
    await a.aclose()
    # Once one leaves, a new one is served again.
    with trio.fail_after(5):
        while True:
            d = await Peer.connect(server.master_port)
            reply = await d.request({"action": "stats"})
            if reply.get("ok"):
                break


async def test_master_that_never_reads_is_dropped(make_server) -> None:  # type: ignore[no-untyped-def]
    server = await make_server(max_outbuf=64 * 1024)
    master = await Peer.connect(server.master_port)
    big = "x" * (256 * 1024)
    n = 80  # 20 MiB of results: more than loopback buffers hold
    await master.send_raw(
        b"".join(
            frame({"action": "submit", "id": i, "type": "big", "body": None}) for i in range(n)
        )
    )
    slave = await Peer.connect(server.slave_port)
    await slave.send({"action": "join", "type": "big"})
    assert await slave.recv() == {"ok": True}
    answered = 0
    with trio.fail_after(20):
        while True:
            msg = await slave.recv()
            if msg.get("action") != "job":
                continue
            await slave.send({"action": "respond", "body": big})
            answered += 1
            stats_peer = await Peer.connect(server.master_port)
            stats = (await stats_peer.request({"action": "stats"}))["stats"]
            await stats_peer.aclose()
            if stats["connections"]["masters"] == 1:  # only the one asking is left
                break
    assert answered < n
    # Handled as a master disconnect: nothing of it is left queued.
    observer = await Peer.connect(server.master_port)
    stats = (await observer.request({"action": "stats"}))["stats"]
    assert all(t["queued"] == 0 for t in stats["types"])


# ------------------------------------------------------------------ TLS


@pytest.fixture
def tls_pair():  # type: ignore[no-untyped-def]
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx, ca, cert


async def tls_peer(port: int, client_ctx: ssl.SSLContext) -> Peer:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, client_ctx, server_hostname="127.0.0.1")
    await tls.do_handshake()
    return Peer(tls)  # type: ignore[arg-type]


async def test_tls_end_to_end_with_token(make_server, tls_pair) -> None:  # type: ignore[no-untyped-def]
    server_ctx, client_ctx, _, _ = tls_pair
    server = await make_server(ssl_context=server_ctx, token=TOKEN)
    slave = await tls_peer(server.slave_port, client_ctx)
    master = await tls_peer(server.master_port, client_ctx)
    assert await slave.request({"action": "auth", "token": TOKEN}) == {"ok": True}
    assert await slave.request({"action": "join", "type": "t"}) == {"ok": True}
    assert await master.request({"action": "auth", "token": TOKEN}) == {"ok": True}
    assert await master.request({"action": "submit", "id": "s", "type": "t", "body": "secret"}) == {
        "ok": True,
        "id": "s",
    }
    job = await slave.recv()
    assert job["body"] == "secret"
    assert await slave.request({"action": "respond", "body": "done"}) == {"ok": True}
    assert await master.recv() == {"id": "s", "body": "done"}


async def test_plaintext_client_on_tls_port_gets_no_frame(make_server, tls_pair) -> None:  # type: ignore[no-untyped-def]
    server_ctx, _, _, _ = tls_pair
    server = await make_server(ssl_context=server_ctx)
    peer = await Peer.connect(server.master_port)
    await peer.send({"action": "stats"})
    with trio.fail_after(5):
        data = b""
        while True:
            chunk = await peer.stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    # Whatever came back (a TLS alert at most) is not a gloomd frame.
    assert b'"ok"' not in data and b'"error"' not in data


def test_daemon_tls_flags(tmp_path, tls_pair) -> None:  # type: ignore[no-untyped-def]
    import socket

    _, client_ctx, _, cert = tls_pair
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    server_ssl_context(cert_file, key_file)  # loads
    with spawn_gloomd("--tls-cert", str(cert_file), "--tls-key", str(key_file)) as daemon:
        with socket.create_connection(daemon.master_addr, timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(frame({"action": "stats"}))
                data = b""
                while b"uptime_s" not in data:
                    data += sock.recv(65536)
                assert b'"ok":true' in data
