"""A trio TCP connection carrying frames: one reader, one writer, no torn frames.

Senders never touch the socket.  They append encoded frames to an unbounded
memory channel (`send_nowait`, no checkpoint), and a writer task drains it,
joining whatever has piled up into one `send_all`.  Two things follow:

* registering a request and queueing its bytes happen in one synchronous step,
  so the order of the request FIFO is exactly the order on the wire, whatever
  tasks do concurrently;
* a task cancelled while "sending" cannot leave half a frame on the socket,
  which a cancelled `send_all` can.

It also makes pipelining free: 5,000 submits queued in a loop go out in a few
large writes.
"""

from __future__ import annotations

import math
from typing import Callable

import trio

from .errors import GloomError, ProtocolError, TransportError

__all__ = ["FrameConnection", "connect"]

_READ_SIZE = 256 * 1024
_WRITE_BATCH = 1024 * 1024


async def connect(host: str, port: int, timeout: float | None = 10.0) -> trio.SocketStream:
    """Open a TCP stream to gloomd, turning every failure into `TransportError`."""
    try:
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise TransportError(f"cannot reach gloomd at {host}:{port}: timed out") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TransportError(f"cannot reach gloomd at {host}:{port}: {reason}") from None


class FrameConnection:
    """One connected stream.  `run` returns the error that ended it."""

    def __init__(self, stream: trio.SocketStream, peer: str) -> None:
        self.peer = peer
        self._stream = stream
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes](math.inf)
        self.error: GloomError | None = None

    @property
    def alive(self) -> bool:
        return self.error is None

    def send_nowait(self, data: bytes) -> None:
        if self.error is not None:
            raise TransportError(str(self.error))
        self._outbox_send.send_nowait(data)

    async def run(self, on_data: Callable[[bytes], None]) -> GloomError:
        """Read into `on_data` and write the outbox until the connection ends.

        Never raises (except Cancelled): the caller decides what a lost
        connection means (fail the waiters, or reconnect).
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, nursery.cancel_scope)
                await self._read_loop(on_data)
                nursery.cancel_scope.cancel()
        finally:
            if self.error is None:
                self.error = TransportError(f"connection to gloomd at {self.peer} closed")
            self._outbox_send.close()
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
        return self.error

    async def _read_loop(self, on_data: Callable[[bytes], None]) -> None:
        while True:
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail(TransportError(f"connection to gloomd at {self.peer} lost: {exc}"))
                return
            if not data:
                self._fail(TransportError(f"gloomd at {self.peer} closed the connection"))
                return
            try:
                on_data(data)
            except ProtocolError as exc:
                self._fail(exc)
                return

    async def _write_loop(self, reader_scope: trio.CancelScope) -> None:
        receive = self._outbox_receive
        async for first in receive:
            batch = [first]
            size = len(first)
            while size < _WRITE_BATCH:
                try:
                    more = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(more)
                size += len(more)
            try:
                await self._stream.send_all(b"".join(batch) if len(batch) > 1 else first)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail(TransportError(f"connection to gloomd at {self.peer} lost: {exc}"))
                reader_scope.cancel()
                return

    def _fail(self, error: GloomError) -> None:
        if self.error is None:
            self.error = error

    def close_with(self, error: GloomError) -> None:
        """Remember why the connection is being closed (e.g. a server notice)."""
        self._fail(error)
