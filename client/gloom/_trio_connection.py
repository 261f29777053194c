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
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Callable

import trio

from ._security import AuthHandshake
from .errors import GloomError, ProtocolError, TransportError

__all__ = ["FrameConnection", "StartedStream", "connect"]

_READ_SIZE = 256 * 1024
_WRITE_BATCH = 1024 * 1024


async def connect(
    host: str,
    port: int,
    timeout: float | None = 10.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> trio.abc.Stream:
    """Open a stream to gloomd, in TLS and authenticated when asked.

    Everything (TCP, TLS handshake, auth exchange) shares one `timeout`.  A
    failure to connect or to complete TLS is a `TransportError`; a refused
    token is `Unauthorized`.  Bytes that followed the auth reply, if any, are
    returned first by the stream (see `StartedStream`).
    """
    where = f"{host}:{port}"
    stream: trio.abc.Stream | None = None
    phase = "connection"
    try:
        with trio.fail_after(math.inf if timeout is None else timeout):
            stream = await trio.open_tcp_stream(host, port)
            if ssl_context is not None:
                phase = "TLS handshake"
                stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
                await stream.do_handshake()
            leftover = b""
            if token is not None:
                phase = "auth"
                leftover = await _authenticate(stream, token, where)
            return StartedStream(stream, leftover)
    except trio.TooSlowError:
        await _close_quietly(stream)
        raise TransportError(f"cannot reach gloomd at {where}: {phase} timed out") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await _close_quietly(stream)
        cause = exc.__cause__ or exc
        raise TransportError(f"{phase} with gloomd at {where} failed: {cause}") from None
    except OSError as exc:
        await _close_quietly(stream)
        reason = exc.strerror or str(exc)
        raise TransportError(f"cannot reach gloomd at {where}: {reason}") from None
    except BaseException:
        await _close_quietly(stream)
        raise


async def _authenticate(stream: trio.abc.Stream, token: str, where: str) -> bytes:
    """Send the auth frame and wait for its reply; returns bytes read past it."""
    handshake = AuthHandshake(token)
    await stream.send_all(handshake.request)
    while True:
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            # gloomd always says why before closing; silence means something
            # else hung up (a TLS-only port, a proxy, not gloomd).
            raise TransportError(f"gloomd at {where} closed the connection during auth")
        if handshake.receive_data(data):
            return handshake.leftover


async def _close_quietly(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


class StartedStream(trio.abc.Stream):
    """A connected stream plus the bytes already read from it during auth.

    Wrapping rather than returning a pair keeps `connect`'s callers unchanged:
    they get a Stream, and the first `receive_some` returns the leftover.
    """

    def __init__(self, stream: trio.abc.Stream, leftover: bytes = b"") -> None:
        self.stream = stream
        self._leftover = leftover

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class FrameConnection:
    """One connected stream.  `run` returns the error that ended it."""

    def __init__(self, stream: trio.abc.Stream, peer: str) -> None:
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


@asynccontextmanager
async def running_beside(task: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """Run `task` while the caller's block runs; cancel it when the block ends.

    An exception from the block is re-raised as itself, outside the nursery,
    so callers of `open_master`/`open_slave` see their own exception rather
    than an ExceptionGroup wrapping it.
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task)
        try:
            yield
        except BaseException as exc:
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None
