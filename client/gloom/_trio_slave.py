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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Unpack

import trio

from ._connect import Backoff, Endpoint, Security, connect, reconnect
from ._protocol import Request
from ._slave_protocol import Answered, JobOffered, Notice, SlaveProtocol, attempt_of
from ._trio_connection import FrameConnection, running_beside, wake
from .errors import GloomError, ProtocolError, TransportError, Unauthorized

__all__ = ["AsyncSlave", "SlaveConnection", "SlaveJob", "open_slave"]

_UNSET: Any = object()


class SlaveConnection:
    """One slave connection: its frames, its protocol state, and their dispatch.

    Received bytes go through `SlaveProtocol`; job offers are handed to
    `on_job`, replies wake whoever waits on their request (`call`), and a
    notice (an error frame that answers nothing, sent before a close) is kept
    as the reason the connection ends.  `AsyncSlave` makes one per
    (re)connection; the worker runner's links are built on it too.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        on_job: Callable[[SlaveConnection, dict[str, Any]], None],
        hint: str = "",
    ) -> None:
        self.connection = FrameConnection(stream, peer, hint)
        self.protocol = SlaveProtocol()
        self._on_job = on_job
        #: trio time of the last bytes received (a heartbeat reads it).
        self.last_inbound = trio.current_time()

    @property
    def alive(self) -> bool:
        return self.connection.alive

    async def call(self, request: Request, data: bytes) -> None:
        """Send a request and wait for its reply; raise its error, which is a
        `TransportError` when the connection ends first."""
        await self.connection.call(request, data)

    async def run(self) -> GloomError:
        """Move frames until the connection ends; return why (see `FrameConnection.run`).

        Every request still waiting is then answered with that error.
        """
        try:
            return await self.connection.run(self._on_data)
        finally:
            error = self.connection.error or TransportError("connection closed")
            for request in self.protocol.connection_lost(error):
                wake(request)

    def _on_data(self, data: bytes) -> None:
        self.last_inbound = trio.current_time()
        for event in self.protocol.receive_data(data):
            if isinstance(event, JobOffered):
                self._on_job(self, event.frame)
            elif isinstance(event, Answered):
                wake(event.request)
            elif isinstance(event, Notice):
                self.connection.close_with(
                    TransportError(f"gloomd refused the connection: {event.error}")
                )


class SlaveJob:
    """A job handed to this slave.

    `attempt` is the delivery count: 1 for the first, whose frame carries no
    ``attempt`` (gloomd sends it only on a redelivery, Gloom never did).
    `timeout` is the job's run-time limit in seconds when the submit set one,
    else None.  `frame` is the raw job frame.  Answer exactly once with
    `respond` or `fail`.
    """

    def __init__(self, slave: AsyncSlave, link: SlaveConnection, frame: dict[str, Any]) -> None:
        self.id: Any = frame["id"]
        self.type: Any = frame["type"]
        self.body: Any = frame["body"]
        self.attempt: int = attempt_of(frame)
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
        await self._link.call(request, data)


class AsyncSlave:
    """A slave connection that reconnects by itself.  Get one with `open_slave`."""

    def __init__(
        self, endpoint: Endpoint, stream: trio.abc.Stream, backoff: Backoff | None
    ) -> None:
        self.host = endpoint.host
        self.port = endpoint.port
        self._endpoint = endpoint
        self._link = SlaveConnection(stream, endpoint.peer, self._offer, endpoint.tls_hint)
        self._backoff = backoff  # None: a lost connection is not replaced
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
                await link.call(*link.protocol.join(type))
                return
            except TransportError:
                if self._backoff is None:
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

    async def _current_link(self) -> SlaveConnection:
        while not self._link.alive:
            if isinstance(self._closed, Unauthorized):
                raise Unauthorized(self._closed.reason)
            if self._closed is not None:
                raise TransportError(str(self._closed))
            await self._new_link.wait()
        return self._link

    def _offer(self, link: SlaveConnection, frame: dict[str, Any]) -> None:
        self._offers_send.send_nowait(SlaveJob(self, link, frame))

    async def _run(self) -> None:
        link = self._link
        while True:
            error = await link.run()
            if self._backoff is None:
                self._stop(error)
                return
            try:
                # In TLS and authenticated again, as the first connection was.
                stream = await reconnect(self._endpoint, self._backoff)
            except Unauthorized as refused:
                # The daemon came back with another token: retrying cannot
                # help, so the slave stops and says why.
                self._stop(refused)
                return
            link = SlaveConnection(
                stream, self._endpoint.peer, self._offer, self._endpoint.tls_hint
            )
            self._link = link
            self.reconnects += 1
            event, self._new_link = self._new_link, trio.Event()
            event.set()
            if self._type is not _UNSET:
                # Not awaited here: the reply is read by the `_serve` below.
                _request, data = link.protocol.join(self._type)
                link.connection.send_nowait(data)

    def _stop(self, error: GloomError) -> None:
        self._closed = error
        self._offers_send.close()
        self._new_link.set()


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
    **security: Unpack[Security],
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
    endpoint = Endpoint.configure(host, port, connect_timeout, **security)
    backoff = Backoff(reconnect_delay, max_reconnect_delay) if reconnect else None
    slave = AsyncSlave(endpoint, await connect(endpoint), backoff)
    async with running_beside(slave._run):
        yield slave
