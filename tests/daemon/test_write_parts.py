"""`PlainConnection.write_parts`: frames with a large body handed to the kernel
unjoined (issue 20), with what it does not take queued as `write` queues it."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gloomd.transport import IOV_MAX, PlainConnection


class _Ingest:
    def queued(self) -> int:
        return 0

    def clear(self) -> None:
        pass


Made = tuple[PlainConnection[Any], socket.socket, list[str]]


@pytest.fixture
def connection() -> Iterator[Callable[[int], Made]]:
    socks: list[socket.socket] = []

    def make(sndbuf: int) -> Made:
        made = _connection(sndbuf)
        socks.extend((made[0].sock, made[1]))
        return made

    yield make
    for sock in socks:
        sock.close()


def _connection(sndbuf: int) -> Made:
    here, there = socket.socketpair()
    here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    here.setblocking(False)
    there.setblocking(False)
    events: list[str] = []
    conn: PlainConnection[Any] = PlainConnection(
        here,
        _Ingest(),  # type: ignore[arg-type]
        "s1",
        "127.0.0.1",
        "slave",
        1 << 24,
        lambda c: events.append("change"),
        lambda c: events.append("abort"),
    )
    return conn, there, events


def _drain(sock: socket.socket) -> bytes:
    got = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return b"".join(got)
        got.append(chunk)


def test_parts_the_kernel_takes_whole_leave_nothing_queued(
    connection: Callable[[int], Made],
) -> None:
    conn, there, events = connection(1 << 20)
    parts = [b"\0\0\0\x05", b"hello", b"x" * 70_000]
    conn.write_parts(parts)
    assert conn.outbuf == b"" and events == []
    assert _drain(there) == b"".join(parts)


def test_what_the_kernel_leaves_is_queued_in_order_and_sent_later(
    connection: Callable[[int], Made],
) -> None:
    conn, there, events = connection(4096)
    parts = [bytes([i]) * 50_000 for i in range(1, 6)]
    conn.write_parts(parts)
    assert conn.outbuf and events == ["change"]  # the reactor waits for writability
    conn.write(b"after")  # behind the queued rest, never before it
    got = _drain(there)
    while conn.outbuf:
        conn.on_writable()
        got += _drain(there)
    assert got == b"".join(parts) + b"after"


def test_behind_queued_output_or_past_the_iov_limit_the_parts_are_joined(
    connection: Callable[[int], Made],
) -> None:
    conn, there, _ = connection(1 << 20)
    conn.outbuf += b"first"
    conn.write_parts([b"a", b"b"])  # queued behind: not sent before "first"
    assert conn.outbuf == b"firstab"
    conn.outbuf.clear()
    many = [b"p"] * (IOV_MAX + 1)
    conn.write_parts(many)  # sendmsg would refuse so many buffers
    assert _drain(there) == b"p" * (IOV_MAX + 1)
