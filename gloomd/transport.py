"""Connections: the only place that knows how bytes reach a peer.

The server needs five things from a connection: `receive_some` (async),
`write` (sync: the flusher must never block), `write_loop` (the task that
finishes what `write` could not), `start_closing`/`wait_drained` (write out,
then EOF) and `close`.  Two implementations share that surface:

* `SocketConnection`, plain TCP on a non-blocking socket driven by trio's
  `wait_readable`/`wait_writable`.  `write` sends straight from the caller
  when the kernel has room, which is nearly always: no task switch per frame.
  This is the fast path, and why gloomd does not use `SocketStream` for it.
* `StreamConnection`, any trio `Stream`, used for TLS (`trio.SSLStream`).
  Writes are buffered and sent by its writer task, since an SSL stream cannot
  be written without awaiting.
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from .broker import Peer
from .framing import FrameDecoder

__all__ = ["Connection", "SocketConnection", "StreamConnection", "RECV_SIZE"]

RECV_SIZE = 256 * 1024


class Connection:
    """State shared by both transports: decoder, output buffer, lifecycle."""

    __slots__ = (
        "name",
        "host",
        "role",
        "peer",
        "decoder",
        "outbuf",
        "max_outbuf",
        "scope",
        "closed",
        "closing",
        "overflowed",
        "authenticated",
        "_writer_lot",
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
        self.scope: trio.CancelScope | None = None
        self.closed = False
        self.closing = False  # shutting down: EOF once the buffer drains
        self.overflowed = False
        self.authenticated = False
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drained = trio.Event()

    async def receive_some(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def write(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def write_loop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_overflow(self) -> None:
        if len(self.outbuf) > self.max_outbuf:
            # A peer that does not read would make us hold its frames forever.
            self.overflowed = True
            self.abort()

    def start_closing(self) -> None:
        """Finish writing what is queued, then send EOF (shutdown path)."""
        self.closing = True
        self._writer_lot.unpark()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def abort(self) -> None:
        """Drop the connection now; the server's cleanup tells the broker."""
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()


class SocketConnection(Connection):
    """Plain TCP on a non-blocking socket, written to directly when possible."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket, name: str, host: str, role: str, max_frame: int, max_outbuf: int) -> None:
        super().__init__(name, host, role, max_frame, max_outbuf)
        self.sock = sock

    async def receive_some(self) -> bytes:
        """Next chunk of bytes, b"" at end of stream or on a reset."""
        sock = self.sock
        # Try first: by the time a connection's task comes round again, its
        # peer has usually answered already (measured: waiting first costs
        # more than the failed recv it saves).
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        else:
            # Data was already there: yield once anyway, so that a busy
            # connection cannot starve the others (and the flusher runs).
            await trio.lowlevel.checkpoint()
            return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""

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
            self._writer_lot.unpark()
        self._check_overflow()

    async def write_loop(self) -> None:
        """Drain what `write` could not send at once; half-close when told to."""
        sock = self.sock
        while True:
            if not self.outbuf:
                if self.closing:
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    self._drained.set()
                    return
                await self._writer_lot.park()
                continue
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(self.outbuf)
            except BlockingIOError:
                continue
            except OSError:
                self.abort()
                return
            del self.outbuf[:sent]

    def close(self) -> None:
        self.closed = True
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class StreamConnection(Connection):
    """A trio Stream (TLS): buffered writes, sent by the writer task."""

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream, name: str, host: str, role: str, max_frame: int, max_outbuf: int) -> None:
        super().__init__(name, host, role, max_frame, max_outbuf)
        self.stream = stream

    async def receive_some(self) -> bytes:
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

    def close(self) -> None:
        self.closed = True
        _close_stream_socket(self.stream)


def _close_stream_socket(stream: Any) -> None:
    """Close the socket under a (possibly wrapped) stream without awaiting."""
    while hasattr(stream, "transport_stream"):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    if sock is not None:
        sock.close()
