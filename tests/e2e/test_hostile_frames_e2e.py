"""Single hostile frames against a real `gloomd` process (issue 18).

Each of these frames used to stop the daemon (exit 1, every job in memory
lost).  Each test sends one, checks the documented answer, then proves the
daemon is still up by a full round trip on fresh connections.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import ClassVar

import pytest

from gloomwire import codec
from tests.support.daemon import Daemon, spawn_gloomd
from tests.support.wire import frame, raw_frame

pytestmark = pytest.mark.timeout(60)

TOKEN = "hostile-test-token"
#: A run of 19+ digits sends a small payload down the standard-library path.
LONG_INT = b"12345678901234567890123456789"


class Conn:
    """A blocking frame connection with a timeout on every read.

    Every connection opened is kept in `OPEN` and closed after the test,
    pass or fail (see the `close_conns` fixture).
    """

    OPEN: ClassVar[list[Conn]] = []

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=10)
        self.buf = b""
        Conn.OPEN.append(self)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv(self) -> object:
        assert self._fill(4), "connection closed"
        (n,) = struct.unpack_from(">I", self.buf)
        assert self._fill(4 + n), "connection closed mid-frame"
        payload, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        return codec.loads(payload)

    def eof(self) -> bool:
        return not self._fill(1)

    def request(self, obj: object) -> object:
        self.send_raw(frame(obj))
        return self.recv()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(autouse=True)
def close_conns() -> Iterator[None]:
    yield
    while Conn.OPEN:
        Conn.OPEN.pop().close()


def round_trip(daemon: Daemon, token: str | None = None) -> None:
    """A well-behaved master and slave still get a job through."""
    master = Conn(daemon.master_addr)
    slave = Conn(daemon.slave_addr)
    try:
        if token is not None:
            assert master.request({"action": "auth", "token": token}) == {"ok": True}
            assert slave.request({"action": "auth", "token": token}) == {"ok": True}
        assert slave.request({"action": "join", "type": "rt"}) == {"ok": True}
        assert master.request({"action": "submit", "id": "rt", "type": "rt", "body": 1}) == {
            "ok": True,
            "id": "rt",
        }
        job = slave.recv()
        assert isinstance(job, dict) and job["id"] == "rt"
        assert slave.request({"action": "respond", "body": 2}) == {"ok": True}
        assert master.recv() == {"id": "rt", "body": 2}
    finally:
        master.close()
        slave.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd() as d:
        yield d
        assert d.proc.poll() is None, "gloomd exited"


def test_lone_surrogate_token_before_auth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The auth frame goes through the same decoder: a lone surrogate beside a
    long integer is invalid JSON, so the answer is `unauthorized`, not a crash."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    with spawn_gloomd("--token-file", str(path)) as d:
        conn = Conn(d.master_addr)
        conn.send_raw(raw_frame(b'{"action":"auth","token":"\\ud800","n":' + LONG_INT + b"}"))
        assert conn.recv() == {"error": "unauthorized", "reason": "auth"}
        assert conn.eof()
        conn.close()
        round_trip(d, TOKEN)
        assert d.proc.poll() is None


@pytest.mark.parametrize(
    "port,payload",
    [
        ("master", b'{"action":"\\ud800","n":' + LONG_INT + b"}"),
        ("slave", b'{"action":"\\udfff","n":' + LONG_INT + b"}"),
        ("master", b'{"action":"submit","id":"\\ud800x","type":"t","body":' + LONG_INT + b"}"),
        ("master", b'{"action":"result","id":"\\udc00","n":' + LONG_INT + b"}"),
        # As an object key, deep inside the body.
        ("master", b'{"action":"submit","id":1,"type":"t","body":{"\\ud834":' + LONG_INT + b"}}"),
    ],
)
def test_lone_surrogate_echoed_string(daemon: Daemon, port: str, payload: bytes) -> None:
    conn = Conn(daemon.master_addr if port == "master" else daemon.slave_addr)
    conn.send_raw(raw_frame(payload))
    reply = conn.recv()
    assert isinstance(reply, dict) and reply["error"] == "invalid_json"
    # The connection stays open (the frame boundary was intact).
    assert isinstance(conn.request({"action": "ping"}), dict)
    conn.close()
    round_trip(daemon)


@pytest.mark.parametrize("port,action", [("slave", "join"), ("master", "submit")])
def test_non_finite_number_in_type(daemon: Daemon, port: str, action: str) -> None:
    conn = Conn(daemon.master_addr if port == "master" else daemon.slave_addr)
    job_type = b"[1e400," + LONG_INT + b"]"
    payload = b'{"action":"' + action.encode() + b'","id":5,"type":' + job_type + b',"body":0}'
    conn.send_raw(raw_frame(payload))
    reply = conn.recv()
    assert isinstance(reply, dict) and reply["error"] == "invalid_json"
    conn.close()
    round_trip(daemon)


def test_huge_timeout_is_refused_not_a_bomb(daemon: Daemon) -> None:
    master = Conn(daemon.master_addr)
    bomb = b'{"action":"submit","id":"bomb","type":"b","body":0,"timeout":1' + b"0" * 400 + b"}"
    master.send_raw(raw_frame(bomb))
    assert master.recv() == {"error": "invalid_type", "reason": "timeout"}
    # Had it been queued, the slave taking it would have stopped the daemon.
    slave = Conn(daemon.slave_addr)
    assert slave.request({"action": "join", "type": "b"}) == {"ok": True}
    submit = {"action": "submit", "id": "ok", "type": "b", "body": 0, "timeout": 5}
    assert master.request(submit) == {"ok": True, "id": "ok"}
    job = slave.recv()
    assert isinstance(job, dict) and job["id"] == "ok" and job["timeout"] == 5
    master.close()
    slave.close()
    round_trip(daemon)
