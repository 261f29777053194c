"""The client's one way to reach gloomd: `Endpoint`, `Backoff`, the connect twins,
the slave protocol's ping and leave, and how a `FrameConnection` ends.

Sans-IO pieces are fed by hand; the connection tests use trio's memory
streams on the autojump clock; the twins and the start-up probe talk to tiny
hand-written servers on 127.0.0.1, so an old daemon (or Gloom) can be played.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gloom._connect import Backoff, Endpoint, connect, connect_blocking
from gloom._slave_protocol import PARKING_TYPE, Answered, SlaveProtocol, attempt_of
from gloom._trio_connection import FrameConnection
from gloom.errors import ServerError, TransportError, Unauthorized
from gloom.worker.probe import probe
from gloomwire import codec
from gloomwire.framing import FrameDecoder
from tests.support.wire import frame, raw_frame

pytestmark = pytest.mark.timeout(20)

HOST = "127.0.0.1"


# ---------------------------------------------------------------- sans-IO


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_reset() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_endpoint_resolves_the_security_options_once(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(" secret \n")
    endpoint = Endpoint.configure(HOST, 9, 2.5, token_file=token_file, tls=True)
    assert (endpoint.peer, endpoint.token, endpoint.connect_timeout) == (f"{HOST}:9", "secret", 2.5)
    assert isinstance(endpoint.ssl_context, ssl.SSLContext)
    assert "secret" not in repr(endpoint)  # the token stays out of logs
    plain = Endpoint.configure(HOST, 9)
    assert plain.ssl_context is None and plain.connect_timeout == 10.0


def test_ping_is_answered_by_ok_or_by_an_old_daemons_error_frame() -> None:
    proto = SlaveProtocol()
    ping, data = proto.ping()
    assert data == raw_frame(b'{"action":"ping"}')
    events = proto.receive_data(frame({"ok": True}))
    assert events == [Answered(ping)] and ping.answered and ping.error is None
    old, _ = proto.ping()
    proto.receive_data(frame({"error": "unknown_type", "reason": "ping"}))
    assert old.answered and isinstance(old.error, ServerError)


def test_leave_is_a_join_of_the_parking_type() -> None:
    request, data = SlaveProtocol().leave()
    assert request.kind == "leave"
    assert data == frame({"action": "join", "type": PARKING_TYPE})


@pytest.mark.parametrize(
    ("extra", "attempt"),
    [({}, 1), ({"attempt": 3}, 3), ({"attempt": None}, 1), ({"attempt": True}, 1)],
)
def test_a_job_frame_without_attempt_is_a_first_delivery(
    extra: dict[str, Any], attempt: int
) -> None:
    job = {"action": "job", "id": 1, "type": "t", "body": None, **extra}
    assert attempt_of(job) == attempt


# ---------------------------------------------------------------- FrameConnection


class _StuckClose(trio.abc.Stream):
    """A stream that never delivers and whose polite close never finishes (a
    TLS close_notify to a daemon that stopped reading)."""

    def __init__(self) -> None:
        self.closed_forcefully = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self.closed_forcefully:
            return
        try:
            await trio.sleep_forever()
        finally:
            self.closed_forcefully = True


async def test_abort_ends_the_connection_with_its_reason_and_close_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = _StuckClose()
    connection = FrameConnection(stream, "test")
    ended: list[Any] = []

    async def run() -> None:
        ended.append(await connection.run(lambda data: None))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        connection.abort(TransportError("no frame from gloomd for 15 s"))
    assert str(ended[0]) == "no frame from gloomd for 15 s" and not connection.alive
    # The polite close got its second and no more; then the stream was closed anyway.
    assert trio.current_time() - started == pytest.approx(1.0)
    assert stream.closed_forcefully


# ---------------------------------------------------------------- the twins and the probe


Reply = Callable[[dict[str, Any]], list[dict[str, Any]]]


def _serve_once(reply: Reply) -> tuple[socket.socket, list[Any]]:
    """A one-connection server on a thread: each frame read gets `reply(frame)`'s
    frames back; an empty list closes the connection."""
    listener = socket.create_server((HOST, 0))
    seen: list[Any] = []

    def run() -> None:
        conn, _ = listener.accept()
        decoder = FrameDecoder()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for payload in decoder.feed(data):
                    message = codec.loads(payload)
                    seen.append(message)
                    answers = reply(message)
                    if not answers:
                        return
                    conn.sendall(b"".join(frame(a) for a in answers))

    threading.Thread(target=run, daemon=True).start()
    return listener, seen


@pytest.fixture
def server() -> Iterator[Callable[..., tuple[int, list[Any]]]]:
    listeners: list[socket.socket] = []

    def start(reply: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> tuple[int, list[Any]]:
        listener, seen = _serve_once(reply)
        listeners.append(listener)
        return listener.getsockname()[1], seen

    yield start
    for listener in listeners:
        listener.close()


JOB = {"action": "job", "id": 1, "type": "t", "body": None}


def _ok_with_extra(message: dict[str, Any]) -> list[dict[str, Any]]:
    # Bytes that follow the auth reply in the same read must reach the protocol.
    return [{"ok": True}, JOB]


async def test_trio_and_blocking_connect_send_the_same_auth_and_keep_what_follows(
    server: Callable[..., tuple[int, list[Any]]],
) -> None:
    port, seen = server(_ok_with_extra)
    stream = await connect(Endpoint(HOST, port, token="t"))
    with trio.fail_after(5):
        assert await stream.receive_some() == frame(JOB)
    await stream.aclose()
    port2, seen2 = server(_ok_with_extra)
    endpoint = Endpoint(HOST, port2, token="t")
    sock, leftover = await trio.to_thread.run_sync(connect_blocking, endpoint)
    sock.close()
    assert leftover == frame(JOB)
    assert seen == seen2 == [{"action": "auth", "token": "t"}]


@pytest.mark.parametrize(
    "answer", [{"ok": True}, {"error": "unknown_type", "reason": "ping"}], ids=["gloomd", "older"]
)
async def test_probe_takes_any_answer_to_its_ping(
    server: Callable[..., tuple[int, list[Any]]], answer: dict[str, Any]
) -> None:
    port, seen = server(lambda message: [answer])
    with trio.fail_after(5):
        await probe(Endpoint(HOST, port))
    assert seen == [{"action": "ping"}]


async def test_probe_reports_a_refusal_and_a_silent_close(
    server: Callable[..., tuple[int, list[Any]]],
) -> None:
    port, _ = server(lambda message: [{"error": "unauthorized", "reason": "auth"}])
    with trio.fail_after(5), pytest.raises(Unauthorized):
        await probe(Endpoint(HOST, port))
    port, _ = server(lambda message: [])
    with trio.fail_after(5), pytest.raises(TransportError, match=r"without a reply.*try --tls"):
        await probe(Endpoint(HOST, port))
