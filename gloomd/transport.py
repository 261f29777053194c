"""Connections: the only place that knows how bytes reach a peer.

Two transports share one surface (`write`, `start_closing`, `wait_drained`,
`abort`) so the server and the broker never care which one a peer uses:

* `PlainConnection`: plain TCP on a non-blocking socket.  It has no task of
  its own; the `Reactor` reads it, and `write` sends straight from the caller
  when the kernel has room, which is nearly always.  Only a full kernel
  buffer makes it ask the reactor for a writable event.
* `StreamConnection`: any trio `Stream`, used for TLS (`trio.SSLStream`),
  with its own reader task (in the server) and writer task (here), since an
  SSL stream cannot be read or written without awaiting.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import trio

from .broker import Peer
from .framing import FrameDecoder

__all__ = ["Connection", "PlainConnection", "StreamConnection", "RECV_SIZE"]

RECV_SIZE = 256 * 1024
INF = float("inf")


class Connection:
    """What both transports keep: decoder, output buffer, deadlines, lifecycle."""

    __slots__ = (
        "name",
        "host",
        "role",
        "peer",
        "decoder",
        "outbuf",
        "max_outbuf",
        "closed",
        "closing",
        "released",
        "overflowed",
        "authenticated",
        "auth_deadline",
        "frame_deadline",
        "_drained",
    )

    def __init__(self, name: str, host: str, role: str, max_frame: int, max_outbuf: int) -> None:
        self.name = name
        self.host = host
        self.role = role
        self.peer: Peer | None = None
        self.decoder = FrameDecoder(max_frame)
        self.outbuf = bytearray()
        self.max_outbuf = max_outbuf
        self.closed = False  # no more writes
        self.closing = False  # write out what is queued, then EOF
        self.released = False  # the broker has been told this peer is gone
        self.overflowed = False
        self.authenticated = False
        #: Must authenticate by then (inf: done, or no token configured).
        self.auth_deadline = INF
        #: The frame that has started must be complete by then (inf: none started).
        self.frame_deadline = INF
        self._drained = trio.Event()

    @property
    def deadline(self) -> float:
        return self.auth_deadline if self.auth_deadline < self.frame_deadline else self.frame_deadline

    def write(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start_closing(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def _check_overflow(self) -> None:
        if len(self.outbuf) > self.max_outbuf:
            # A peer that does not read would make us hold its frames forever.
            self.overflowed = True
            self.abort()


class PlainConnection(Connection):
    """Plain TCP, multiplexed by the reactor; written to directly when possible.

    `on_backlog(conn, waiting)` tells the reactor whether the connection has
    bytes waiting for the socket to become writable; `on_abort(conn)` asks it
    to drop the connection.
    """

    __slots__ = ("sock", "fd", "lingering", "linger_deadline", "_on_backlog", "_on_abort")

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        host: str,
        role: str,
        max_frame: int,
        max_outbuf: int,
        on_backlog: Callable[[PlainConnection, bool], None],
        on_abort: Callable[[PlainConnection], None],
    ) -> None:
        super().__init__(name, host, role, max_frame, max_outbuf)
        self.sock = sock
        self.fd = sock.fileno()
        self.lingering = False  # hung up: discarding input until EOF
        self.linger_deadline = INF
        self._on_backlog = on_backlog
        self._on_abort = on_abort

    def write(self, data: bytes) -> None:
        """Queue `data`, sending as much as the kernel takes right now."""
        if self.closed:
            return
        if self.outbuf:
            self.outbuf += data
        else:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            self.outbuf += memoryview(data)[sent:]
            self._on_backlog(self, True)
        self._check_overflow()

    def on_writable(self) -> None:
        """The reactor saw the socket writable: send what is buffered."""
        if self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except BlockingIOError:
                return
            except OSError:
                self.abort()
                return
            del self.outbuf[:sent]
            if self.outbuf:
                return
        self._on_backlog(self, False)
        if self.closing:
            self._send_eof()

    def start_closing(self) -> None:
        self.closing = True
        if not self.outbuf:
            self._send_eof()

    def _send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._drained.set()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_abort(self)


class StreamConnection(Connection):
    """A trio Stream (TLS): buffered writes, sent by `write_loop`."""

    __slots__ = ("stream", "scope", "_writer_lot")

    def __init__(self, stream: trio.abc.Stream, name: str, host: str, role: str, max_frame: int, max_outbuf: int) -> None:
        super().__init__(name, host, role, max_frame, max_outbuf)
        self.stream = stream
        self.scope: trio.CancelScope | None = None
        self._writer_lot = trio.lowlevel.ParkingLot()

    async def receive_some(self) -> bytes:
        """Next chunk of bytes, b"" at end of stream or when broken."""
        try:
            return bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.outbuf += data
        self._writer_lot.unpark()
        self._check_overflow()

    async def write_loop(self) -> None:
        while True:
            if not self.outbuf:
                if self.closing:
                    self._drained.set()
                    return
                await self._writer_lot.park()
                continue
            data = bytes(self.outbuf)
            self.outbuf.clear()
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.abort()
                return

    def start_closing(self) -> None:
        self.closing = True
        self._writer_lot.unpark()

    def abort(self) -> None:
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()

    def close(self) -> None:
        """Close the socket under the stream without awaiting (cleanup path)."""
        self.closed = True
        stream: Any = self.stream
        while hasattr(stream, "transport_stream"):
            stream = stream.transport_stream
        sock = getattr(stream, "socket", None)
        if sock is not None:
            sock.close()
