"""Per-connection limits of issue 18: write timeout, refusals, keepalive, descriptors."""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
from typing import Any

import pytest
import trio
import trustme

from tests.support.daemon import spawn_gloomd
from tests.support.logs import log_text
from tests.support.wire import Peer, frame, join

pytestmark = pytest.mark.timeout(60)

BIG = "x" * (512 * 1024)


def on_release(server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[trio.Event, list[str]]:
    released = trio.Event()
    reasons: list[str] = []
    real_release = server.release

    def release(conn: Any, reason: str) -> None:
        real_release(conn, reason)
        if conn.role == "master" and reason != "eof":
            reasons.append(reason)
            released.set()

    monkeypatch.setattr(server, "release", release)
    return released, reasons


async def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_output_that_does_not_drain_is_dropped(
    make_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tls: bool
) -> None:
    """A master that never reads keeps nothing for ever: after `write_timeout`
    its connection is dropped (handled as a disconnect)."""
    caplog.set_level(logging.INFO, logger="gloomd")
    settings: dict[str, Any] = {"write_timeout": 0.5}
    client_ctx: ssl.SSLContext | None = None
    if tls:
        settings["ssl_context"], client_ctx = await tls_contexts()
    server = await make_server(**settings)
    released, reasons = on_release(server, monkeypatch)

    async def connect(port: int) -> Peer:
        if client_ctx is None:
            return await Peer.connect(port)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1")
        await stream.do_handshake()
        return Peer(stream)  # type: ignore[arg-type]

    master = await connect(server.master_port)
    slave = await connect(server.slave_port)
    with trio.fail_after(10):
        assert await slave.request({"action": "join", "type": "big"}) == {"ok": True}
        submit = {"action": "submit", "id": "b", "type": "big", "body": 0, "detach": True}
        assert await master.request(submit) == {"ok": True, "id": "b"}
        await slave.recv()
        assert await slave.request({"action": "respond", "body": BIG}) == {"ok": True}
        assert await master.recv() == {"id": "b", "body": BIG}
    # 16 MB of answers asked for, and never read.
    await master.send_raw(b"".join(frame({"action": "result", "id": "b"}) for _ in range(32)))
    started = trio.current_time()
    with trio.fail_after(10):
        await released.wait()
    assert reasons == ["write_timeout"]
    assert trio.current_time() - started >= 0.5
    assert "event=write_timeout" in log_text(caplog)
    assert await slave.request({"action": "ping"}) == {"ok": True}  # the others are served on


async def test_refused_connections_are_closed_at_once(make_server: Any) -> None:
    """The refused socket is closed when the refusal is sent: the client sees
    EOF while its own end is still open, and the daemon holds no descriptor."""
    server = await make_server(max_per_host=1)
    first = await Peer.connect(server.master_port)
    assert await first.request({"action": "ping"}) == {"ok": True}
    before = len(os.listdir("/proc/self/fd"))
    refused = []
    for _ in range(20):
        peer = await Peer.connect(server.master_port)
        with trio.fail_after(5):
            assert await peer.recv() == {"error": "too_many_connections", "reason": 1}
            assert await peer.recv_eof()
        refused.append(peer)
    # Our 20 client ends are still open; the daemon's 20 ends are not.
    assert len(os.listdir("/proc/self/fd")) - before == 20


async def test_accepted_sockets_have_keepalive(make_server: Any) -> None:
    server = await make_server(keepalive_idle=42, keepalive_interval=7, keepalive_count=3)
    slave = await join(server.slave_port, "t")
    assert await slave.request({"action": "ping"}) == {"ok": True}
    (conn,) = server._connections
    sock = conn.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_daemon_raises_its_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the daemon inherits this
    try:
        daemon_cm = spawn_gloomd()
        daemon = daemon_cm.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        daemon_cm.__exit__(None, None, None)


def test_descriptor_limit_is_readable() -> None:
    from gloomd.fdlimit import descriptor_limit, raise_soft_limit

    assert raise_soft_limit() == descriptor_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
