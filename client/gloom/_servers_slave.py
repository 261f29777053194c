"""The Gearman way for a trio slave: `open_slaves(["h1:9999", "h2:9999"])`.

One `AsyncSlave` per daemon, each joined to the same type and reconnecting
by itself (the client's `Backoff`); `jobs()` yields the jobs of all of them
as they come.  Each connection holds at most one job, so a slave over N
daemons may be offered up to N jobs at once: one handled, the others held
by their daemons until it is answered (not requeued, since they were
delivered).  A program that wants one job at a time everywhere runs one
`AsyncSlave` per daemon itself, or uses `gloom worker --servers`, whose
slots park their other connections while a job runs.

A daemon that cannot be reached at the start is tried again in the
background with the same back-off; at least one must answer (else
`TransportError`, so a typo still fails fast).  A refused token anywhere is
raised (`Unauthorized`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Unpack

import trio

from ._connect import Backoff, Endpoint, Security, connect
from ._servers import Address, parse_servers
from ._trio_connection import nursery_beside
from ._trio_slave import AsyncSlave, SlaveJob
from .errors import GloomError, TransportError, Unauthorized

__all__ = ["AsyncSlaves", "open_slaves"]

_UNSET: Any = object()


class AsyncSlaves:
    """Slave connections to several daemons.  Get one with `open_slaves`."""

    def __init__(self, endpoints: list[Endpoint], nursery: trio.Nursery) -> None:
        self._endpoints = endpoints
        self._nursery = nursery
        self._slaves: list[AsyncSlave | None] = [None] * len(endpoints)
        self._type: Any = _UNSET
        self._send, self._jobs = trio.open_memory_channel[SlaveJob](math.inf)
        self._error: GloomError | None = None

    @property
    def connected(self) -> int:
        """How many daemons are connected now."""
        return sum(1 for slave in self._slaves if slave is not None and slave.connected)

    async def join(self, type: Any) -> None:
        """Serve jobs of `type` on every daemon (re-joined after each reconnect;
        a daemon still unreachable joins once it is reached)."""
        self._type = type
        async with trio.open_nursery() as nursery:
            for slave in self._slaves:
                if slave is not None and slave.connected:
                    nursery.start_soon(slave.join, type)
                elif slave is not None:
                    slave._type = type  # joined by its reconnect

    async def next_job(self) -> SlaveJob:
        """The next job any daemon offers (on a connection still alive)."""
        while True:
            if self._error is not None:
                raise self._error
            job = await self._jobs.receive()
            if job.alive:
                return job

    def jobs(self) -> AsyncIterator[SlaveJob]:
        """Jobs as they come from every daemon, forever."""
        return _Jobs(self)

    # -- internals ----------------------------------------------------------------

    def _add(self, index: int, slave: AsyncSlave) -> None:
        self._slaves[index] = slave
        self._nursery.start_soon(self._forward, slave)

    async def _forward(self, slave: AsyncSlave) -> None:
        try:
            async for job in slave.jobs():
                self._send.send_nowait(job)
        except Unauthorized as exc:
            self._error = exc
            self._send.send_nowait(_STOP)  # wakes `next_job`, which raises

    async def _late(self, index: int, backoff: Backoff) -> None:
        """Reach a daemon that was down at the start, then serve it like the others."""
        endpoint = self._endpoints[index]
        while True:
            await trio.sleep(backoff.next())
            try:
                stream = await connect(endpoint)
            except TransportError:
                continue
            except Unauthorized as exc:
                self._error = exc
                self._send.send_nowait(_STOP)
                return
            slave = AsyncSlave(endpoint, stream, backoff)
            self._add(index, slave)
            if self._type is not _UNSET:
                slave._type = self._type
                self._nursery.start_soon(slave.join, self._type)
            await slave._run()
            return


class _Stop:
    """Wakes `next_job` so that it raises the stored error."""

    alive = False


_STOP: Any = _Stop()


class _Jobs:
    def __init__(self, slaves: AsyncSlaves) -> None:
        self._slaves = slaves

    def __aiter__(self) -> _Jobs:
        return self

    async def __anext__(self) -> SlaveJob:
        return await self._slaves.next_job()


@asynccontextmanager
async def open_slaves(
    servers: str | Iterable[str | Address],
    *,
    reconnect_delay: float = 1.0,
    max_reconnect_delay: float = 30.0,
    connect_timeout: float | None = 10.0,
    **security: Unpack[Security],
) -> AsyncIterator[AsyncSlaves]:
    """Slave connections to every daemon of `servers` for the duration of the block.

    `servers` is ``"h1:9999,h2:9999"`` or a list of "host:port" / (host,
    port); reconnecting and security as for `open_slave`.
    """
    addresses = parse_servers(servers, 9999)
    first = Endpoint.configure(*addresses[0], connect_timeout, **security)
    endpoints = [first] + [
        Endpoint(host, port, first.ssl_context, first.token, connect_timeout)
        for host, port in addresses[1:]
    ]
    streams: list[trio.abc.Stream | TransportError] = []
    try:
        for endpoint in endpoints:
            try:
                streams.append(await connect(endpoint))
            except TransportError as exc:
                streams.append(exc)
    except BaseException:  # a refused token: close what was opened
        for stream in streams:
            if not isinstance(stream, TransportError):
                await trio.aclose_forcefully(stream)
        raise
    errors = [s for s in streams if isinstance(s, TransportError)]
    if len(errors) == len(streams):
        raise errors[0]
    async with nursery_beside() as nursery:
        slaves = AsyncSlaves(endpoints, nursery)
        for index, (endpoint, stream) in enumerate(zip(endpoints, streams, strict=True)):
            backoff = Backoff(reconnect_delay, max_reconnect_delay)
            if isinstance(stream, TransportError):
                nursery.start_soon(slaves._late, index, backoff)
                continue
            slave = AsyncSlave(endpoint, stream, backoff)
            slaves._add(index, slave)
            nursery.start_soon(slave._run)
        yield slaves
