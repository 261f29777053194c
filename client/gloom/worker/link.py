"""One slave connection of the runner, held by one pool slot.

Why not `gloom.open_slave`: that slave re-joins by itself after a reconnect,
which is right for a single-job client but wrong here, where a connection may
only be joined while its pool process is free (otherwise the daemon hands us
a job we cannot start).  So the runner keeps the policy (when to join, when
to leave, when to reconnect) and this module only moves frames:

* replies (``ok`` / ``error``) come back in request order, so each request
  waits on its own slot in a FIFO; ``job`` frames go to a channel;
* frames are queued to one writer task, so a cancelled caller can never leave
  half a frame on the socket, and the request FIFO matches the wire order;
* security: the connection is made by the client's `connect`, so TLS and
  the auth exchange are the same as `open_master`/`open_slave`'s; a refused
  token surfaces as `Unauthorized` from `open_link` itself, before any join;
* liveness: TCP keepalive always, and, when `heartbeat` > 0, a ``ping``
  every `heartbeat` seconds; any inbound frame counts as a sign of life, and
  `liveness` intervals of silence close the link (the runner reconnects).
  gloomd answers ``ping`` with ``{"ok":true}`` (older daemons, and Gloom,
  answer with an ``unknown_type`` error frame); either answer is all we need.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from gloomwire import codec
from gloomwire.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameTooLarge, encode_frame

from .._trio_connection import StartedStream, connect
from ..errors import Unauthorized

__all__ = ["LEAVING_TYPE", "LinkLost", "SlaveLink", "open_link", "socket_stream", "tune_socket"]

#: The type a leaving slot re-joins so the daemon takes back any job already
#: on its way to us, without counting it as lost (a re-join puts a held job
#: back).  Nobody submits jobs of this type.
LEAVING_TYPE: Any = ["gloom.worker", "leaving"]

_READ_SIZE = 256 * 1024
#: Seconds a closing TLS link may spend sending its close_notify; a daemon
#: that stopped reading must not hold the runner (the transport is closed anyway).
_CLOSE_TIMEOUT = 1.0


class LinkLost(Exception):
    """The connection is gone (or declared dead by the heartbeat)."""


class _Reply:
    __slots__ = ("event", "frame")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.frame: dict[str, Any] | None = None


def _set_keepalive(sock: Any, interval: float, liveness: int) -> None:
    """Kernel-level heartbeat: catches a peer host that vanished without a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    seconds = max(1, int(interval))
    for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", seconds), ("TCP_KEEPCNT", liveness)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def socket_stream(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The TCP stream under `connect`'s wrappers (auth leftover, then TLS).

    Socket options belong to the TCP socket whatever is layered on top of it,
    so they are set there; None for a stream with no socket (a test's memory
    stream), which then simply goes without them.
    """
    while True:
        if isinstance(stream, trio.SocketStream):
            return stream
        if isinstance(stream, StartedStream):
            stream = stream.stream
        elif isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        else:
            return None


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
        self.last_inbound = trio.current_time()
        self._stream = stream
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._replies: deque[_Reply] = deque()
        self._jobs_send, self._jobs = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._out_send, self._out = trio.open_memory_channel[bytes](math.inf)
        self._scope: trio.CancelScope | None = None
        self._lost_event = trio.Event()

    # ------------------------------------------------------------ API

    async def join(self, job_type: Any) -> None:
        reply = await self.request({"action": "join", "type": job_type})
        if reply.get("error") == "unauthorized":
            # A daemon that wants a token from a runner that has none answers
            # the first frame so; like a refused token, retrying cannot help.
            raise Unauthorized(reply.get("reason", "auth"))
        if not reply.get("ok"):
            raise LinkLost(f"gloomd refused join: {reply!r:.200}")

    async def next_job(self) -> dict[str, Any]:
        try:
            return await self._jobs.receive()
        except trio.EndOfChannel:
            raise LinkLost(self.lost or "closed") from None

    def send_nowait(self, frame: dict[str, Any]) -> None:
        """Queue a frame that gets no reply (``progress``); dropped if the link is gone."""
        if self.lost is None:
            self._out_send.send_nowait(encode_frame(frame))

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame that gets exactly one reply, and return that reply."""
        if self.lost is not None:
            raise LinkLost(self.lost)
        reply = _Reply()
        self._replies.append(reply)
        self._out_send.send_nowait(encode_frame(frame))
        await reply.event.wait()
        if reply.frame is None:
            raise LinkLost(self.lost or "closed")
        return reply.frame

    async def leave(self) -> int:
        """Stop being offered jobs; returns how many job frames the daemon took back.

        Re-joining a type nobody submits makes the daemon put back a job it
        had just handed us; every job frame that arrived before the join's
        reply is such a job, and we drop it.
        """
        await self.request({"action": "join", "type": LEAVING_TYPE})
        returned = 0
        while True:
            try:
                self._jobs.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return returned
            returned += 1

    async def wait_lost(self) -> None:
        await self._lost_event.wait()

    def close(self, reason: str) -> None:
        self._mark_lost(reason)
        if self._scope is not None:
            self._scope.cancel()

    # ------------------------------------------------------------ tasks

    def _mark_lost(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = reason
        self._jobs_send.close()
        self._out_send.close()
        while self._replies:
            self._replies.popleft().event.set()
        self._lost_event.set()

    def _on_frame(self, frame: Any) -> None:
        if not isinstance(frame, dict):
            raise LinkLost(f"unexpected frame from gloomd: {frame!r:.200}")
        if frame.get("action") == "job":
            self._jobs_send.send_nowait(frame)
        elif "ok" in frame or "error" in frame:
            if not self._replies:
                # An unsolicited error is a notice before a close (e.g. too many
                # connections); nothing to wake, the close follows.
                return
            reply = self._replies.popleft()
            reply.frame = frame
            reply.event.set()
        else:
            raise LinkLost(f"unexpected frame from gloomd: {frame!r:.200}")

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self._stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._mark_lost(f"connection lost: {exc}")
                return
            if not data:
                self._mark_lost("gloomd closed the connection")
                return
            self.last_inbound = trio.current_time()
            try:
                for payload in self._decoder.feed(data):
                    self._on_frame(codec.loads(payload))
            except (FrameTooLarge, codec.DecodeError, LinkLost) as exc:
                self._mark_lost(f"protocol error: {exc}")
                return

    async def _write_loop(self) -> None:
        async for first in self._out:
            batch = [first]
            while True:
                try:
                    batch.append(self._out.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            try:
                await self._stream.send_all(b"".join(batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._mark_lost(f"connection lost: {exc}")
                return

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat
        while self.lost is None:
            silent_until = self.last_inbound + interval * self.liveness
            now = trio.current_time()
            if now >= silent_until:
                self._mark_lost(f"no frame from gloomd for {interval * self.liveness:g} s")
                return
            await trio.sleep(min(interval, silent_until - now))
            if self.lost is None and trio.current_time() - self.last_inbound >= interval:
                # Its reply (ok or an error frame) is the sign of life we want.
                self._replies.append(_Reply())
                self._out_send.send_nowait(encode_frame({"action": "ping"}))


@asynccontextmanager
async def open_link(
    host: str,
    port: int,
    *,
    heartbeat: float = 5.0,
    liveness: int = 3,
    connect_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> AsyncIterator[SlaveLink]:
    """Connect to the slave port; the link's tasks live as long as the block.

    `ssl_context` wraps the connection in TLS (the certificate checked against
    `host`); `token` is presented in an auth frame before anything else.  Raises
    `TransportError` if it cannot connect (TCP, TLS or the auth exchange, all
    within `connect_timeout`) and `Unauthorized` if the token is refused.
    Leaving the block closes the connection (a job still held is then requeued
    by the daemon).
    """
    stream = await connect(host, port, connect_timeout, ssl_context=ssl_context, token=token)
    tune_socket(stream, heartbeat if heartbeat > 0 else 5.0, liveness)
    link = SlaveLink(stream, f"{host}:{port}", heartbeat, liveness)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            link._scope = nursery.cancel_scope
            nursery.start_soon(link._read_loop)
            nursery.start_soon(link._write_loop)
            if heartbeat > 0:
                nursery.start_soon(link._heartbeat_loop)
            try:
                yield link
            except BaseException as exc:
                # Re-raised outside the nursery, so callers see their own
                # exception and not an ExceptionGroup around it.
                body_error = exc
            finally:
                link._mark_lost("closed by the runner")
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await stream.aclose()
            # A cancelled aclose still closes the transport; this makes sure.
            await trio.aclose_forcefully(stream)
    if body_error is not None:
        try:
            raise body_error
        finally:
            body_error = None
