"""A trio connection carrying frames: one reader, one writer, no torn frames.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._protocol import Request
from .errors import GloomError, ProtocolError, TransportError

__all__ = ["FrameConnection", "running_beside", "wake"]

_READ_SIZE = 256 * 1024
_WRITE_BATCH = 1024 * 1024
#: Seconds a closing TLS connection may spend sending its close_notify: a
#: daemon that stopped reading must not hold the client (the transport is
#: closed anyway).
_CLOSE_TIMEOUT = 1.0


class FrameConnection:
    """One connected stream.  `run` returns the error that ended it."""

    def __init__(self, stream: trio.abc.Stream, peer: str, hint: str = "") -> None:
        self.peer = peer
        self._stream = stream
        #: Said after "closed the connection" when it closes before any byte
        #: came back (`gloom._connect.TLS_HINT` on a plaintext connection).
        self._hint = hint
        self._heard = False
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes](math.inf)
        self._scope: trio.CancelScope | None = None
        self.error: GloomError | None = None

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def stream(self) -> trio.abc.Stream:
        """The stream underneath (for socket options; never read or write it)."""
        return self._stream

    def send_nowait(self, data: bytes) -> None:
        if self.error is not None:
            raise TransportError(str(self.error))
        self._outbox_send.send_nowait(data)

    async def call(self, request: Request, data: bytes) -> Any:
        """Send a request and wait until the reader resolves it (and `wake`s
        it): its value, or its error raised."""
        event = trio.Event()
        request.waker = event
        self.send_nowait(data)
        await event.wait()
        if request.error is not None:
            raise request.error
        return request.value

    async def run(self, on_data: Callable[[bytes], None]) -> GloomError:
        """Read into `on_data` and write the outbox until the connection ends.

        Never raises (except Cancelled): the caller decides what a lost
        connection means (fail the waiters, or reconnect).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self.error is None:  # not aborted before it ran
                    nursery.start_soon(self._write_loop, nursery.cancel_scope)
                    await self._read_loop(on_data)
                nursery.cancel_scope.cancel()
        finally:
            if self.error is None:
                self.error = TransportError(f"connection to gloomd at {self.peer} closed")
            self._outbox_send.close()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_CLOSE_TIMEOUT):
                    await self._stream.aclose()
                # A cancelled aclose still closes the transport; this makes sure.
                await trio.aclose_forcefully(self._stream)
        return self.error

    async def _read_loop(self, on_data: Callable[[bytes], None]) -> None:
        while True:
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._fail(TransportError(f"connection to gloomd at {self.peer} lost: {exc}"))
                return
            if not data:
                hint = "" if self._heard else self._hint
                self._fail(TransportError(f"gloomd at {self.peer} closed the connection{hint}"))
                return
            self._heard = True
            try:
                on_data(bytes(data))  # a stream may hand over a bytearray
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

    def abort(self, error: GloomError) -> None:
        """End the connection now, `error` being why (e.g. a silent daemon):
        `run` stops reading and writing, closes the stream and returns it."""
        self._fail(error)
        if self._scope is not None:
            self._scope.cancel()


def wake(request: Request) -> None:
    """Wake whoever waits in `FrameConnection.call` for this request."""
    if isinstance(request.waker, trio.Event):
        request.waker.set()


@asynccontextmanager
async def nursery_beside() -> AsyncIterator[trio.Nursery]:
    """A nursery for tasks that run while the caller's block runs, cancelled
    when the block ends.

    An exception from the block is re-raised as itself, outside the nursery,
    so callers of `open_master`/`open_slave` (and their several-daemon
    forms) see their own exception rather than an ExceptionGroup wrapping it.
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except BaseException as exc:
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None


@asynccontextmanager
async def running_beside(task: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """Run `task` while the caller's block runs (`nursery_beside`)."""
    async with nursery_beside() as nursery:
        nursery.start_soon(task)
        yield
