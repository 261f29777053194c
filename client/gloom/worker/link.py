"""One slave connection of the runner, held by one pool slot.

Built on the client's own pieces: the client's `connect` makes the connection
(TLS and the auth exchange exactly as `open_master`/`open_slave` do them, so
a refused token surfaces as `Unauthorized` from `open_link` itself), and
`SlaveConnection`, the trio slave's own, carries it: `FrameConnection` moves
the frames (one writer task, so a cancelled caller never leaves half a frame
on the socket) and `SlaveProtocol` matches replies to requests and tells job
offers apart.

Why not `gloom.open_slave` itself: that slave re-joins by itself after a
reconnect, which is right for a single-job client but wrong here, where a
connection may only be joined while its pool process is free (otherwise the
daemon hands us a job we cannot start).  So the runner keeps the policy (when
to join, when to leave, when to reconnect) and a link lives for exactly one
connection.  What the link adds to the slave protocol:

* leaving: `leave` parks the connection on a type nobody submits, and drops
  the job frames the daemon thereby took back;
* liveness: TCP keepalive always, and, when `heartbeat` > 0, a ``ping``
  every `heartbeat` seconds of silence; any inbound frame counts as a sign of
  life, and `liveness` intervals of silence end the link (the runner
  reconnects).  gloomd answers ``ping`` with ``{"ok":true}`` (older daemons,
  and Gloom, answer with an ``unknown_type`` error frame); either is enough.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._connect import Endpoint, connect, socket_stream
from .._protocol import Request
from .._slave_protocol import PARKING_TYPE
from .._trio_connection import running_beside
from .._trio_slave import SlaveConnection
from ..errors import ServerError, TransportError, Unauthorized

__all__ = ["LEAVING_TYPE", "LinkLost", "SlaveLink", "open_link", "socket_stream", "tune_socket"]

#: The type a leaving slot re-joins (`SlaveProtocol.leave`), so the daemon
#: takes back any job already on its way to us without counting it as lost.
LEAVING_TYPE: Any = PARKING_TYPE


class LinkLost(Exception):
    """The connection is gone (or declared dead by the heartbeat)."""


def _set_keepalive(sock: Any, interval: float, liveness: int) -> None:
    """Kernel-level heartbeat: catches a peer host that vanished without a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    seconds = max(1, int(interval))
    for name, value in (
        ("TCP_KEEPIDLE", seconds),
        ("TCP_KEEPINTVL", seconds),
        ("TCP_KEEPCNT", liveness),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def tune_socket(stream: trio.abc.Stream, keepalive_interval: float, liveness: int) -> None:
    """NODELAY (small frames must not wait for Nagle) and TCP keepalive."""
    tcp = socket_stream(stream)
    if tcp is None:
        return
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _set_keepalive(tcp.socket, keepalive_interval, liveness)


class SlaveLink:
    """A connected slave link; use through `open_link`."""

    def __init__(self, stream: trio.abc.Stream, peer: str, heartbeat: float, liveness: int) -> None:
        self.peer = peer
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.lost: str | None = None
        self._jobs_send, self._jobs = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._lost_event = trio.Event()
        self._conn = SlaveConnection(stream, peer, self._offer)
        self.protocol = self._conn.protocol
        #: Called after each job frame is queued (`MultiLink` waits on several links).
        self.on_offer: Callable[[], None] | None = None

    # ------------------------------------------------------------ API

    @property
    def stream(self) -> trio.abc.Stream:
        """The connected stream (socket options are read from it)."""
        return self._conn.connection.stream

    @property
    def jobs_waiting(self) -> int:
        """Job frames received and not yet taken by `next_job`."""
        return self._jobs.statistics().current_buffer_used

    async def join(self, job_type: Any) -> None:
        try:
            await self._call(*self.protocol.join(job_type))
        except Unauthorized:
            # A daemon that wants a token from a runner that has none answers
            # the first frame so; like a refused token, retrying cannot help.
            raise
        except ServerError as exc:
            raise LinkLost(f"gloomd refused join: {exc}") from None

    async def next_job(self) -> dict[str, Any]:
        try:
            return await self._jobs.receive()
        except trio.EndOfChannel:
            raise LinkLost(self.lost or "closed") from None

    def take_nowait(self) -> dict[str, Any] | None:
        """A job frame already received, or None."""
        try:
            return self._jobs.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None

    def abort(self, reason: str) -> None:
        """Close the connection now (its daemon requeues what it sent us)."""
        self._conn.connection.abort(TransportError(reason))

    def send_progress(self, body: Any) -> None:
        """Queue a ``progress`` frame (no reply); dropped if the link is gone."""
        if self.lost is None and self._conn.alive:
            self._conn.connection.send_nowait(self.protocol.progress(body))

    async def answer(self, frame: dict[str, Any]) -> None:
        """Send a job's outcome: a ``respond`` or ``fail`` frame, as a dict.

        Its reply is awaited (the daemon hands out the next job only after
        it); an error reply changes nothing for us, so it is not raised.
        """
        if frame.get("action") == "respond":
            request, data = self.protocol.respond(frame.get("body"))
        else:
            request, data = self.protocol.fail(frame["error"], frame.get("reason"))
        try:
            await self._call(request, data)
        except ServerError:
            pass

    async def leave(self) -> int:
        """Stop being offered jobs; returns how many job frames the daemon took back.

        Every job frame that arrived before the leave's reply, taken or not by
        `next_job`, is such a job: it is dropped here.
        """
        try:
            await self._call(*self.protocol.leave())
        except ServerError:
            pass
        returned = 0
        while True:
            try:
                self._jobs.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return returned
            returned += 1

    async def wait_lost(self) -> None:
        await self._lost_event.wait()

    # ------------------------------------------------------------ internals

    async def _call(self, request: Request, data: bytes) -> None:
        """Send a request and wait for its reply; `LinkLost` if the link dies first."""
        if self.lost is not None:
            raise LinkLost(self.lost)
        try:
            await self._conn.call(request, data)
        except TransportError as exc:
            raise LinkLost(self.lost or str(exc)) from None

    def _offer(self, _conn: SlaveConnection, frame: dict[str, Any]) -> None:
        self._jobs_send.send_nowait(frame)
        if self.on_offer is not None:
            self.on_offer()

    def _mark_lost(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self._jobs_send.close()
        self._lost_event.set()

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.heartbeat > 0:
                nursery.start_soon(self._heartbeat_loop)
            error = await self._conn.run()
            self._mark_lost(str(error))
            nursery.cancel_scope.cancel()

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat
        conn = self._conn
        while self.lost is None and conn.alive:
            silent_until = conn.last_inbound + interval * self.liveness
            now = trio.current_time()
            if now >= silent_until:
                silence = interval * self.liveness
                conn.connection.abort(TransportError(f"no frame from gloomd for {silence:g} s"))
                return
            await trio.sleep(min(interval, silent_until - now))
            if conn.alive and trio.current_time() - conn.last_inbound >= interval:
                # Its reply (ok or an error frame) is the sign of life we want;
                # nobody waits for it.
                _, data = self.protocol.ping()
                conn.connection.send_nowait(data)


@asynccontextmanager
async def open_link(
    endpoint: Endpoint, *, heartbeat: float = 5.0, liveness: int = 3
) -> AsyncIterator[SlaveLink]:
    """Connect to the slave port; the link's tasks live as long as the block.

    Raises `TransportError` if it cannot connect (TCP, TLS or the auth
    exchange, all within the endpoint's `connect_timeout`) and `Unauthorized`
    if the token is refused.  Leaving the block closes the connection (a job
    still held is then requeued by the daemon).
    """
    stream = await connect(endpoint)
    tune_socket(stream, heartbeat if heartbeat > 0 else 5.0, liveness)
    link = SlaveLink(stream, endpoint.peer, heartbeat, liveness)
    async with running_beside(link._run):
        try:
            yield link
        finally:
            link._mark_lost("closed by the runner")
