"""Each connection is a boundary: a failure while serving it ends it alone (issue 18).

A broker method (or a write) is made to raise for one peer; that peer gets
`internal_error` and is closed, the failure is logged once with its
traceback, and every other connection keeps being served, on plain TCP and
on TLS alike.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
import trio
import trustme

from gloomd.broker import Broker
from gloomd.messages import Join
from gloomd.transport import PlainConnection
from tests.support.logs import log_text, message
from tests.support.wire import Peer, frame, join

TlsContexts = tuple[ssl.SSLContext, ssl.SSLContext]

pytestmark = pytest.mark.timeout(30)

INTERNAL = {"error": "internal_error", "reason": "RuntimeError"}


def fail_joins_of(broker: Broker, doomed_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_join = broker._join

    def join_or_fail(slave: Any, msg: Join) -> None:
        if msg.type == doomed_type:
            raise RuntimeError("injected failure")
        real_join(slave, msg)

    monkeypatch.setattr(broker, "_join", join_or_fail)


async def round_trip(master: Peer, slave: Peer, job_id: str) -> None:
    with trio.fail_after(5):
        assert await master.request({"action": "submit", "id": job_id, "type": "t", "body": 1}) == {
            "ok": True,
            "id": job_id,
        }
        assert (await slave.recv())["id"] == job_id
        assert await slave.request({"action": "respond", "body": 2}) == {"ok": True}
        assert await master.recv() == {"id": job_id, "body": 2}


def internal_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "event=internal_error" in message(r)]


async def test_failing_input_ends_that_connection_only(
    make_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gloomd")
    server = await make_server()
    slave = await join(server.slave_port, "t")
    master = await Peer.connect(server.master_port)
    await round_trip(master, slave, "before")
    fail_joins_of(server.broker, "boom", monkeypatch)

    victim = await Peer.connect(server.slave_port)
    # Frames before the failure are answered; the one after it is not handled.
    await victim.send_raw(
        frame({"action": "join", "type": "t2"})
        + frame({"action": "join", "type": "boom"})
        + frame({"action": "ping"})
    )
    with trio.fail_after(5):
        assert await victim.recv() == {"ok": True}
        assert await victim.recv() == INTERNAL
        assert await victim.recv_eof()

    await round_trip(master, slave, "after")
    late = await join(server.slave_port, "t3")  # new connections are served too
    assert await late.request({"action": "ping"}) == {"ok": True}

    (record,) = internal_errors(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "injected failure" in log_text(caplog)
    # The victim left no trace in the broker: it is gone as any peer that disconnects.
    stats = (await master.request({"action": "stats"}))["stats"]
    assert stats["connections"] == {"masters": 1, "slaves": 2}
    assert sorted(row["type"] for row in stats["types"]) == ["t", "t3"]


async def test_failing_output_ends_that_connection_only(
    make_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gloomd")
    server = await make_server()
    slave = await join(server.slave_port, "t")
    master = await Peer.connect(server.master_port)
    victim = await Peer.connect(server.master_port)
    assert await victim.request({"action": "ping"}) == {"ok": True}
    host, port = victim.stream.socket.getsockname()
    doomed = f"{host}:{port}"
    real_write = PlainConnection.write

    def write_or_fail(conn: PlainConnection, data: bytes) -> None:
        if conn.name == doomed:
            raise RuntimeError("injected write failure")
        real_write(conn, data)

    monkeypatch.setattr(PlainConnection, "write", write_or_fail)
    await victim.send({"action": "stats"})
    with trio.fail_after(5):
        assert await victim.recv_eof()  # the stream could not carry a frame: closed
    await round_trip(master, slave, "after")
    (record,) = internal_errors(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.fixture
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def tls_peer(port: int, client_ctx: ssl.SSLContext) -> Peer:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, client_ctx, server_hostname="127.0.0.1")
    await tls.do_handshake()
    return Peer(tls)  # type: ignore[arg-type]


async def test_failing_input_on_tls_ends_that_connection_only(
    make_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tls_contexts: TlsContexts,
) -> None:
    caplog.set_level(logging.INFO, logger="gloomd")
    server_ctx, client_ctx = tls_contexts
    server = await make_server(ssl_context=server_ctx)
    slave = await tls_peer(server.slave_port, client_ctx)
    assert await slave.request({"action": "join", "type": "t"}) == {"ok": True}
    master = await tls_peer(server.master_port, client_ctx)
    fail_joins_of(server.broker, "boom", monkeypatch)

    victim = await tls_peer(server.slave_port, client_ctx)
    await victim.send({"action": "join", "type": "boom"})
    with trio.fail_after(5):
        assert await victim.recv() == INTERNAL
        try:  # the daemon closes TLS connections without close_notify
            assert await victim.recv_eof()
        except trio.BrokenResourceError:
            pass
    await round_trip(master, slave, "after")
    (record,) = internal_errors(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
