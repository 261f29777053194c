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

Back-pressure (issue 18): a connection whose unsent output passes its
`high_water` mark is *paused*: nobody reads it until the output is down to
half the mark.  Frames of a receive that were not handled when it paused wait
in `stash`, in order, and are handled first when it resumes.  So the output
one connection's requests can pile up is bounded by the mark (plus one
answer), not by how many requests fit in a receive.  Output that others cause
(results for a master) is bounded by `max_outbuf`, and output that makes no
progress for `write_timeout` seconds drops the connection.

What the bytes mean is not known here: a connection hands what it receives to
its `ingest` (`gloomd.ingest.Ingest`), of which it knows only the `Inbound`
surface below, so this module imports nothing of the broker.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import trio

from gloomwire.framing import FrameDecoder

__all__ = ["RECV_SIZE", "Connection", "Inbound", "PlainConnection", "StreamConnection"]

RECV_SIZE = 256 * 1024
#: Most buffers one `sendmsg` takes (Linux's UIO_MAXIOV); more are joined first.
IOV_MAX = 1024
INF = float("inf")
#: Default high-water mark of a connection's unsent output, bytes.
DEFAULT_HIGH_WATER = 1024 * 1024


class Inbound(Protocol):
    """The receiving side a connection feeds (`gloomd.ingest.Ingest`), as seen from here."""

    @property
    def decoder(self) -> FrameDecoder:
        """The framing of received bytes (`pending`: a frame has started)."""

    def queued(self) -> int:
        """Bytes of output queued for this peer and not yet handed to the connection."""

    def clear(self) -> None:
        """The connection is gone: let go of any partial frame."""


InboundT = TypeVar("InboundT", bound=Inbound)


class Connection(Generic[InboundT]):
    """What both transports keep: ingest, output buffer, deadlines, lifecycle."""

    __slots__ = (
        "_drained",
        "auth_deadline",
        "closed",
        "closing",
        "frame_deadline",
        "hangup",
        "high_water",
        "host",
        "in_flight",
        "ingest",
        "max_outbuf",
        "name",
        "outbuf",
        "overflowed",
        "paused",
        "released",
        "role",
        "stash",
        "write_deadline",
        "write_timeout",
    )

    def __init__(
        self,
        ingest: InboundT,
        name: str,
        host: str,
        role: str,
        max_outbuf: int,
        high_water: int = DEFAULT_HIGH_WATER,
        write_timeout: float = INF,
    ) -> None:
        self.name = name
        self.host = host
        self.role = role
        #: Where received bytes go (framing, decoding, auth, the broker).
        self.ingest = ingest
        self.outbuf = bytearray()
        self.max_outbuf = max_outbuf
        self.closed = False  # no more writes
        self.closing = False  # write out what is queued, then EOF
        self.released = False  # the broker has been told this peer is gone
        self.overflowed = False
        #: Must authenticate by then (inf: done, or no token configured).
        self.auth_deadline = INF
        #: The frame that has started must be complete by then (inf: none started).
        self.frame_deadline = INF
        #: The output waiting since some time must be written by then (inf: none waits).
        self.write_deadline = INF
        self.write_timeout = write_timeout
        self.high_water = high_water
        #: Not read until the output is down to half the mark (see the module docstring).
        self.paused = False
        #: Payloads received but not yet handled, while paused.
        self.stash: list[bytes] | None = None
        #: Bytes handed to the stream and not yet sent (TLS; always 0 for plain TCP).
        self.in_flight = 0
        #: Hung up while replies were held (`gloomd.holds`): the reason, until
        #: they are written and the hang-up goes on (`Reactor.hang_up`).
        self.hangup: str | None = None
        self._drained = trio.Event()

    @property
    def deadline(self) -> float:
        return min(self.auth_deadline, self.frame_deadline, self.write_deadline)

    def unsent(self) -> int:
        """Output accepted for this connection and not yet taken by the kernel."""
        return len(self.outbuf) + self.in_flight

    def output_low(self) -> bool:
        """Is the output waiting (queued by the broker, or unsent) down to half the mark?"""
        return self.ingest.queued() + len(self.outbuf) + self.in_flight <= self.high_water // 2

    def pause(self, stash: list[bytes]) -> None:
        """Stop reading; `stash` (the payloads not yet handled) comes first on resume."""
        self.stash = stash
        self.paused = True
        self._changed()

    def free(self) -> None:
        """The connection is over: let go of its buffers now, not at the next GC."""
        self.ingest.clear()
        self.stash = None
        self.paused = False
        if self.closed:
            self.outbuf = bytearray()

    def _changed(self) -> None:
        """What the connection waits for has changed (pause, backlog)."""

    def write(self, data: bytes) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def write_parts(self, parts: list[bytes]) -> None:
        """`write` the parts joined: frames of which some are large (see
        `PlainConnection.write_parts`, which need not join them)."""
        self.write(b"".join(parts))

    def start_closing(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def _overflow(self) -> None:
        # A peer that does not read would make us hold its frames forever.
        self.overflowed = True
        self.abort()


class PlainConnection(Connection[InboundT]):
    """Plain TCP, multiplexed by the reactor; written to directly when possible.

    `on_change(conn)` tells the reactor that what the connection waits for
    changed (output waiting for the socket to be writable, paused reading);
    `on_abort(conn)` asks it to drop the connection.
    """

    __slots__ = (
        "_on_abort",
        "_on_change",
        "fd",
        "linger_deadline",
        "lingering",
        "mask",
        "progress",
        "serial",
        "sock",
        "write_mark",
    )

    def __init__(
        self,
        sock: socket.socket,
        ingest: InboundT,
        name: str,
        host: str,
        role: str,
        max_outbuf: int,
        on_change: Callable[[PlainConnection[Any]], None],
        on_abort: Callable[[PlainConnection[Any]], None],
        high_water: int = DEFAULT_HIGH_WATER,
        write_timeout: float = INF,
    ) -> None:
        super().__init__(ingest, name, host, role, max_outbuf, high_water, write_timeout)
        self.sock = sock
        self.fd = sock.fileno()
        self.serial = 0  # the reactor's number for it: its deadline entries carry it
        self.mask = 0  # the epoll events registered
        #: Counts the times the kernel took output (or had room for it) while
        #: some waited; `write_mark` is its value when the write deadline was
        #: armed, so the reactor tells a slow reader from one that never reads.
        self.progress = 0
        self.write_mark = 0
        self.lingering = False  # hung up: discarding input until EOF
        self.linger_deadline = INF
        self._on_change = on_change
        self._on_abort = on_abort

    def write_parts(self, parts: list[bytes]) -> None:
        """`write` the parts as one buffer, handing the kernel the parts
        themselves (`sendmsg`) when nothing waits before them: a large body
        is then not copied into a joined buffer first (issue 20).  What the
        kernel does not take is joined and queued as `write` would."""
        if self.closed:
            return
        if self.outbuf or len(parts) > IOV_MAX:
            self.write(b"".join(parts))
            return
        try:
            sent = self.sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        size = 0
        for part in parts:
            size += len(part)
        if sent < size:
            self._queue(memoryview(b"".join(parts))[sent:])

    def write(self, data: bytes) -> None:
        """Queue `data`, sending as much as the kernel takes right now."""
        if self.closed:
            return
        rest: bytes | memoryview = data
        if not self.outbuf:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            if sent:
                rest = memoryview(data)[sent:]
        self._queue(rest)

    def _queue(self, rest: bytes | memoryview) -> None:
        """Buffer what the kernel did not take, under the cap."""
        outbuf = self.outbuf
        # Weighed before it is appended: the buffer never holds more than the cap.
        if len(outbuf) + len(rest) > self.max_outbuf:
            self._overflow()
            return
        outbuf += rest
        if len(outbuf) > self.high_water:
            self.paused = True
        self._on_change(self)

    def on_writable(self) -> None:
        """The reactor saw the socket writable: send what is buffered."""
        self.progress += 1  # the kernel has room: the peer has been reading
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
        self._on_change(self)
        if self.closing:
            self._send_eof()

    def _changed(self) -> None:
        self._on_change(self)

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


class StreamConnection(Connection[InboundT]):
    """A trio Stream (TLS): buffered writes, sent by `write_loop`."""

    __slots__ = ("_drain_lot", "_writer_lot", "scope", "stream", "timed_out")

    def __init__(
        self,
        stream: trio.abc.Stream,
        ingest: InboundT,
        name: str,
        host: str,
        role: str,
        max_outbuf: int,
        high_water: int = DEFAULT_HIGH_WATER,
        write_timeout: float = INF,
    ) -> None:
        super().__init__(ingest, name, host, role, max_outbuf, high_water, write_timeout)
        self.stream = stream
        self.scope: trio.CancelScope | None = None
        self.timed_out = False  # dropped because its output did not drain in time
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drain_lot = trio.lowlevel.ParkingLot()

    async def receive_some(self) -> bytes:
        """Next chunk of bytes, b"" at end of stream or when broken."""
        try:
            return bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if len(self.outbuf) + len(data) > self.max_outbuf:
            self._overflow()
            return
        self.outbuf += data
        if self.unsent() > self.high_water:
            self.paused = True
        self._writer_lot.unpark()

    async def wait_output_low(self) -> None:
        """Return once `output_low()` (the flusher and the writer work meanwhile)."""
        while not self.output_low():
            await self._drain_lot.park()

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
            self.in_flight = len(data)
            # One batch must leave within the write timeout: a peer that
            # stops reading cannot make us hold its output for ever.
            with trio.move_on_after(self.write_timeout) as timer:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.abort()
                    return
            del data
            self.in_flight = 0
            if timer.cancelled_caught:
                self.timed_out = True
                self.abort()
                return
            if self.output_low():
                self._drain_lot.unpark_all()

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
