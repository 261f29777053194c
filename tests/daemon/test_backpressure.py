"""Output is bounded by the caps, not by how many requests fit in a receive (issue 18).

A peer's own requests stop being read once its unsent output passes the
high-water mark, and resume, in order, once it drains; output that others
cause is cut at `max_outbuf` as it is queued.  Each test watches every frame
the broker queues for one peer and records the most output that peer ever
had waiting (queued plus unsent), which the old code let grow with the
number of requests.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
import trustme

from gloomd.broker import Broker
from gloomd.broker import Peer as BrokerPeer
from gloomwire import codec
from tests.support.wire import Peer, frame, join

TlsContexts = tuple[ssl.SSLContext, ssl.SSLContext]

pytestmark = pytest.mark.timeout(60)

HIGH_WATER = 256 * 1024
BIG = "x" * (200 * 1024)  # one answer: 200 KiB


def name_of(peer: Peer) -> str:
    sock: Any = peer.stream
    while not hasattr(sock, "socket"):
        sock = sock.transport_stream
    host, port = sock.socket.getsockname()
    return f"{host}:{port}"


def watch_output(broker: Broker, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, after each frame queued for peer `name`, its output waiting in all."""
    peaks = [0]
    real_send = broker.send

    def send(peer: BrokerPeer, obj: Any) -> None:
        real_send(peer, obj)
        if peer.name == name and peer.transport is not None:
            queued = sum(
                len(f) if type(f) is bytes else len(codec.dumps(f)) + 4 for f in peer.outbox
            )
            peaks[0] = max(peaks[0], queued + len(peer.transport.outbuf))

    monkeypatch.setattr(broker, "send", send)
    return peaks


async def detached_result(server: Any, master: Peer) -> None:
    """Leave a 200 KiB detached result in the store, under the id "big"."""
    slave = await join(server.slave_port, "big")
    with trio.fail_after(10):
        submit = {"action": "submit", "id": "big", "type": "big", "body": 0, "detach": True}
        reply = await master.request(submit)
        assert reply == {"ok": True, "id": "big"}
        await slave.recv()
        assert await slave.request({"action": "respond", "body": BIG}) == {"ok": True}
        assert await master.recv() == {"id": "big", "body": BIG}


async def many_result_requests(hog: Peer, count: int) -> None:
    await hog.send_raw(b"".join(frame({"action": "result", "id": "big"}) for _ in range(count)))
    with trio.fail_after(20):
        for _ in range(count):  # every one answered, in order, once it reads
            assert await hog.recv() == {"id": "big", "body": BIG}


async def test_own_requests_pause_at_the_high_water_mark(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(output_high_water=HIGH_WATER)
    master = await Peer.connect(server.master_port)
    await detached_result(server, master)
    hog = await Peer.connect(server.master_port)
    peaks = watch_output(server.broker, name_of(hog), monkeypatch)
    await many_result_requests(hog, 60)  # 12 MB of answers asked for in 2.5 KB
    # The mark, plus the answer that crossed it, plus that answer's frame header.
    assert 0 < peaks[0] <= HIGH_WATER + len(BIG) + 64
    assert await master.request({"action": "ping"}) == {"ok": True}


async def test_others_output_is_cut_when_queued(
    make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress frames from a slave pile up for a master that does not read:
    they are refused past `max_outbuf` as they are queued, and the master is
    dropped, instead of a whole receive's worth being built first."""
    cap = 256 * 1024
    server = await make_server(max_outbuf=cap)
    master = await Peer.connect(server.master_port)
    slave = await join(server.slave_port, "p")
    job_id = "j" * 1000
    with trio.fail_after(5):
        assert await master.request({"action": "submit", "id": job_id, "type": "p", "body": 0}) == {
            "ok": True,
            "id": job_id,
        }
        await slave.recv()
    peaks = watch_output(server.broker, name_of(master), monkeypatch)
    # 4,000 progress frames of 40 bytes ask for 4 MB of frames to the master.
    await slave.send_raw(b"".join(frame({"action": "progress", "body": i}) for i in range(4000)))
    with trio.fail_after(10):
        while await master.recv_payload() is not None:  # what left before the drop, then EOF
            pass
    observer = await Peer.connect(server.master_port)
    stats = (await observer.request({"action": "stats"}))["stats"]
    assert stats["connections"]["masters"] == 1  # the observer alone
    assert peaks[0] <= cap + 1100


@pytest.fixture
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_tls_requests_pause_at_the_high_water_mark(
    make_server: Any, monkeypatch: pytest.MonkeyPatch, tls_contexts: TlsContexts
) -> None:
    server_ctx, client_ctx = tls_contexts
    server = await make_server(output_high_water=HIGH_WATER, ssl_context=server_ctx)

    async def tls_peer(port: int) -> Peer:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, client_ctx, server_hostname="127.0.0.1")
        await tls.do_handshake()
        return Peer(tls)  # type: ignore[arg-type]

    master = await tls_peer(server.master_port)
    slave = await tls_peer(server.slave_port)
    with trio.fail_after(10):
        assert await slave.request({"action": "join", "type": "big"}) == {"ok": True}
        submit = {"action": "submit", "id": "big", "type": "big", "body": 0, "detach": True}
        reply = await master.request(submit)
        assert reply == {"ok": True, "id": "big"}
        await slave.recv()
        assert await slave.request({"action": "respond", "body": BIG}) == {"ok": True}
        assert await master.recv() == {"id": "big", "body": BIG}
    hog = await tls_peer(server.master_port)
    peaks = watch_output(server.broker, name_of(hog), monkeypatch)
    await many_result_requests(hog, 60)
    # Unsent TLS output also counts what the writer holds in flight.
    assert 0 < peaks[0] <= HIGH_WATER + len(BIG) + 64
