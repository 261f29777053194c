"""The trio slave: `open_slave`, `AsyncSlave` and the slave-side `SlaveJob`.

A slave holds one connection at a time and one job per connection.  When the
daemon goes away, a supervisor task reconnects forever with capped
exponential back-off (1 s doubling to 30 s by default) and re-joins the last
joined type, so a long-running slave survives daemon restarts.  A job that
was delivered on a connection that has since died is dead too: the daemon
has requeued it (or was restarted and forgot it), so answering it raises
`TransportError` and `jobs()` never yields it if it was not taken yet.

The worker runner builds on this: one `AsyncSlave` per pool process, joined
only while that process is free, and `SlaveJob.attempt` / `SlaveJob.timeout`
carry the daemon's job-frame extras.
"""

from __future__ import annotations

import math
import os
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from ._slave_protocol import Answered, JobOffered, Notice, SlaveProtocol
from ._protocol import Request
from ._security import client_ssl_context, resolve_token
from ._trio_connection import FrameConnection, connect, running_beside
from .errors import GloomError, ProtocolError, TransportError, Unauthorized

__all__ = ["AsyncSlave", "SlaveJob", "open_slave"]

_UNSET: Any = object()


class _Link:
    """One connection generation: its stream and its protocol state."""

    def __init__(self, connection: FrameConnection) -> None:
        self.connection = connection
        self.protocol = SlaveProtocol()

    @property
    def alive(self) -> bool:
        return self.connection.alive


class SlaveJob:
    """A job handed to this slave.

    `attempt` is the delivery count (1 for the first) and `timeout` the job's
    run-time limit in seconds, when the daemon sent them (gloomd does; Gloom
    did not, which leaves them None).  `frame` is the raw job frame.
    Answer exactly once with `respond` or `fail`.
    """

    def __init__(self, slave: AsyncSlave, link: _Link, frame: dict[str, Any]) -> None:
        self.id: Any = frame["id"]
        self.type: Any = frame["type"]
        self.body: Any = frame["body"]
        self.attempt: int | None = frame.get("attempt")
        self.timeout: float | None = frame.get("timeout")
        self.frame = frame
        self.answered = False
        self._slave = slave
        self._link = link

    def __repr__(self) -> str:
        return f"<gloom.SlaveJob id={self.id!r} type={self.type!r} attempt={self.attempt}>"

    @property
    def alive(self) -> bool:
        """False once the connection that delivered the job is gone."""
        return self._link.alive

    async def respond(self, body: Any = None) -> None:
        """Send the result.  `TransportError` if the connection was lost."""
        self._check_usable()
        await self._answer(*self._link.protocol.respond(body))

    async def fail(self, category: str = "ERROR", reason: Any = None) -> None:
        """Report failure: ``ERROR``, ``TIMEOUT``, ``CRASH`` or ``HALTED``."""
        self._check_usable()
        await self._answer(*self._link.protocol.fail(category, reason))

    async def progress(self, value: Any) -> None:
        """Stream a progress value to the job's master (no reply is awaited)."""
        self._check_usable()
        self._link.connection.send_nowait(self._link.protocol.progress(value))
        await trio.lowlevel.checkpoint()

    def _check_usable(self) -> None:
        if self.answered:
            raise ProtocolError(f"job {self.id!r} was already answered")
        if not self._link.alive:
            raise TransportError(
                f"connection lost while holding job {self.id!r}; the daemon requeues it"
            )

    async def _answer(self, request: Request, data: bytes) -> None:
        self.answered = True
        await self._slave._call(self._link, request, data)


class AsyncSlave:
    """A slave connection that reconnects by itself.  Get one with `open_slave`."""

    def __init__(
        self,
        host: str,
        port: int,
        link: _Link,
        *,
        reconnect: bool,
        reconnect_delay: float,
        max_reconnect_delay: float,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._link = link
        self._reconnect = reconnect
        self._delay = reconnect_delay
        self._max_delay = max_reconnect_delay
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._token = token
        self._type: Any = _UNSET
        self._offers_send, self._offers = trio.open_memory_channel[SlaveJob](math.inf)
        self._new_link = trio.Event()
        self._closed: GloomError | None = None
        #: How many times the connection was re-established (for monitoring).
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._link.alive

    async def join(self, type: Any) -> None:
        """Serve jobs of `type` (any JSON value); joining again switches type.

        The type is remembered and re-joined after every reconnect.  If the
        connection drops before the daemon confirms, this waits for the next
        connection and joins there.
        """
        self._type = type
        while True:
            link = await self._current_link()
            try:
                await self._call(link, *link.protocol.join(type))
                return
            except TransportError:
                if not self._reconnect:
                    raise

    async def next_job(self) -> SlaveJob:
        """The next job offered on a live connection."""
        while True:
            try:
                job = await self._offers.receive()
            except trio.EndOfChannel:
                if isinstance(self._closed, Unauthorized):
                    raise Unauthorized(self._closed.reason) from None
                raise TransportError(str(self._closed)) from None
            if job.alive:
                return job

    def jobs(self) -> AsyncIterator[SlaveJob]:
        """Jobs as they come, forever (or until the connection is lost for good)."""
        return _Jobs(self)

    # -- internals ----------------------------------------------------------------

    async def _current_link(self) -> _Link:
        while not self._link.alive:
            if isinstance(self._closed, Unauthorized):
                raise Unauthorized(self._closed.reason)
            if self._closed is not None:
                raise TransportError(str(self._closed))
            await self._new_link.wait()
        return self._link

    async def _call(self, link: _Link, request: Request, data: bytes) -> None:
        event = trio.Event()
        request.waker = event
        link.connection.send_nowait(data)
        await event.wait()
        if request.error is not None:
            raise request.error

    def _on_data(self, link: _Link, data: bytes) -> None:
        for event in link.protocol.receive_data(data):
            if isinstance(event, JobOffered):
                self._offers_send.send_nowait(SlaveJob(self, link, event.frame))
            elif isinstance(event, Answered):
                if isinstance(event.request.waker, trio.Event):
                    event.request.waker.set()
            elif isinstance(event, Notice):
                link.connection.close_with(
                    TransportError(f"gloomd refused the connection: {event.error}")
                )

    async def _serve(self, link: _Link) -> GloomError:
        error = await link.connection.run(lambda data: self._on_data(link, data))
        for request in link.protocol.connection_lost(error):
            if isinstance(request.waker, trio.Event):
                request.waker.set()
        return error

    async def _run(self) -> None:
        link = self._link
        while True:
            error = await self._serve(link)
            if not self._reconnect:
                self._stop(error)
                return
            try:
                link = await self._reconnect_link()
            except Unauthorized as refused:
                # The daemon came back with another token: retrying cannot
                # help, so the slave stops and says why.
                self._stop(refused)
                return
            self._link = link
            self.reconnects += 1
            event, self._new_link = self._new_link, trio.Event()
            event.set()
            if self._type is not _UNSET:
                # Not awaited here: the reply is read by the `_serve` below.
                request, data = link.protocol.join(self._type)
                link.connection.send_nowait(data)

    def _stop(self, error: GloomError) -> None:
        self._closed = error
        self._offers_send.close()
        self._new_link.set()

    async def _reconnect_link(self) -> _Link:
        """A new connection, in TLS and authenticated again as the first one was."""
        delay = self._delay
        while True:
            await trio.sleep(delay)
            try:
                stream = await connect(
                    self.host,
                    self.port,
                    self._connect_timeout,
                    ssl_context=self._ssl_context,
                    token=self._token,
                )
            except TransportError:
                delay = min(delay * 2, self._max_delay)
                continue
            return _Link(FrameConnection(stream, f"{self.host}:{self.port}"))


class _Jobs:
    """`AsyncSlave.jobs` as a plain async iterator (nothing to finalize when
    the loop is abandoned mid-way, unlike an async generator)."""

    def __init__(self, slave: AsyncSlave) -> None:
        self._slave = slave

    def __aiter__(self) -> _Jobs:
        return self

    async def __anext__(self) -> SlaveJob:
        return await self._slave.next_job()


@asynccontextmanager
async def open_slave(
    host: str = "127.0.0.1",
    port: int = 9999,
    *,
    reconnect: bool = True,
    reconnect_delay: float = 1.0,
    max_reconnect_delay: float = 30.0,
    connect_timeout: float | None = 10.0,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    tls: bool = False,
    tls_ca: str | os.PathLike[str] | None = None,
) -> AsyncIterator[AsyncSlave]:
    """Connect to gloomd's slave port for the duration of the block.

    The first connection must succeed (`TransportError` otherwise, so a typo
    in the address fails fast); later losses are repaired by reconnecting
    after `reconnect_delay` seconds, doubling up to `max_reconnect_delay`.
    With ``reconnect=False`` a loss ends `jobs()` with `TransportError`.

    Security as for `open_master` (`token` / `token_file` / $GLOOMD_TOKEN,
    `ssl_context` / `tls` / `tls_ca`); every reconnect authenticates again,
    and a token refused on reconnect ends `jobs()` with `Unauthorized`.
    """
    context = client_ssl_context(ssl_context, tls=tls, tls_ca=tls_ca)
    secret = resolve_token(token, token_file)
    stream = await connect(host, port, connect_timeout, ssl_context=context, token=secret)
    slave = AsyncSlave(
        host,
        port,
        _Link(FrameConnection(stream, f"{host}:{port}")),
        reconnect=reconnect,
        reconnect_delay=reconnect_delay,
        max_reconnect_delay=max_reconnect_delay,
        connect_timeout=connect_timeout,
        ssl_context=context,
        token=secret,
    )
    async with running_beside(slave._run):
        yield slave

