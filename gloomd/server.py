"""The trio layer: sockets in, broker calls, sockets out.  Nothing else.

Why it looks the way it does (each measured; see benchmarks/):

* Every frame of one receive is handled synchronously, with no await inside
  message handling, so a receive holding fifty responds costs one pass.
* Output is never written from inside the broker.  The broker marks peers
  dirty; a single flusher task, woken once per scheduling round, encodes each
  dirty peer's outbox into one buffer and writes it with one `send`.  A slave's
  ok and its next job leave together, and results from many slaves to one
  master in the same round leave in one write.
* Plain non-blocking sockets driven by `wait_readable`/`wait_writable`
  instead of `SocketStream`: trio's stream layer costs more CPU per job than
  the whole broker.  A connection's writer task only wakes when the kernel
  buffer was full; the common case writes directly from the flusher.
* Transport is kept behind `Connection`'s three operations (`receive_some`,
  `write`, `close`), so TLS (trio's SSL streams) can sit on the same broker.

Structure: `run` owns one nursery with the two accept loops, the flusher and
the timer; every connection is a task in it with its own nursery (reader plus
writer), so cancelling `run` tears everything down in order.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import trio

from .broker import OK_FRAME, Broker, MasterPeer, Peer
from .config import Config
from .framing import FrameTooLarge, FrameTooLargeWithFrames, encode_frame
from .security import auth_frame_ok
from .transport import Connection, SocketConnection, StreamConnection

__all__ = ["GloomServer"]

log = logging.getLogger("gloomd.server")

#: Seconds a refused connection is given to read its error frame before close.
REFUSAL_LINGER = 1.0


class GloomServer:
    """The master and slave listeners around one `Broker`.

    Use as `await nursery.start(server.run)`; `run` reports the server itself
    once both ports listen, so port 0 can be read back from `master_port` and
    `slave_port`.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.master_port = 0
        self.slave_port = 0
        self.broker: Broker | None = None
        self._connections: set[Connection] = set()
        self._per_host: dict[str, int] = {}
        self._handshaking = 0  # TLS connections accepted but not yet serving
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._flush_pending = False
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._accept_scopes: list[trio.CancelScope] = []
        self._run_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[GloomServer] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self.broker = Broker(cfg.limits, clock=trio.current_time)
        master_sock = _listen(cfg.host, cfg.master_port)
        slave_sock = _listen(cfg.host, cfg.slave_port)
        self.master_port = master_sock.getsockname()[1]
        self.slave_port = slave_sock.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._run_scope = nursery.cancel_scope
                nursery.start_soon(self._accept_loop, master_sock, "master")
                nursery.start_soon(self._accept_loop, slave_sock, "slave")
                nursery.start_soon(self._flusher)
                nursery.start_soon(self._timer)
                log.info(
                    "event=listening host=%s master_port=%d slave_port=%d tls=%s auth=%s",
                    cfg.host,
                    self.master_port,
                    self.slave_port,
                    "on" if cfg.ssl_context is not None else "off",
                    "on" if cfg.token is not None else "off",
                )
                task_status.started(self)
        finally:
            for sock in (master_sock, slave_sock):
                trio.lowlevel.notify_closing(sock)
                sock.close()

    async def shutdown(self) -> None:
        """Stop accepting, fail every unanswered job with HALTED, flush, close.

        Returns once every connection has been written out and closed, or the
        grace period ran out; `run` then returns.
        """
        for scope in self._accept_scopes:
            scope.cancel()
        assert self.broker is not None
        halted = self.broker.halt()
        log.info("event=shutdown halted_jobs=%d connections=%d", halted, len(self._connections))
        self._flush()
        with trio.move_on_after(self.config.shutdown_grace):
            for conn in list(self._connections):
                conn.start_closing()
            for conn in list(self._connections):
                await conn.wait_drained()
        if self._run_scope is not None:
            self._run_scope.cancel()

    # ------------------------------------------------------------ accepting

    async def _accept_loop(self, lsock: socket.socket, role: str) -> None:
        assert self._nursery is not None
        nursery = self._nursery
        cfg = self.config
        with trio.CancelScope() as scope:
            self._accept_scopes.append(scope)
            while True:
                await trio.lowlevel.wait_readable(lsock)
                while True:
                    try:
                        sock, addr = lsock.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            # Out of descriptors: back off instead of spinning.
                            log.warning("event=accept_error error=%s", exc)
                            await trio.sleep(0.1)
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
                    name = _peer_name(addr)
                    refusal = self._refusal(host)
                    if refusal is not None:
                        log.warning("event=refused reason=%s peer=%s", refusal["error"], name)
                        # Under TLS a plaintext frame would be garbage: just close.
                        frame = None if cfg.ssl_context is not None else encode_frame(refusal)
                        nursery.start_soon(_refuse, sock, frame)
                        continue
                    self._per_host[host] = self._per_host.get(host, 0) + 1
                    nursery.start_soon(self._serve, sock, name, host, role)

    def _refusal(self, host: str) -> dict[str, Any] | None:
        cfg = self.config
        if len(self._connections) + self._handshaking >= cfg.max_connections:
            return {"error": "too_many_connections", "reason": cfg.max_connections}
        if self._per_host.get(host, 0) >= cfg.max_per_host:
            return {"error": "too_many_connections", "reason": cfg.max_per_host}
        return None

    # ------------------------------------------------------------ one connection

    async def _serve(self, sock: socket.socket, name: str, host: str, role: str) -> None:
        cfg = self.config
        try:
            if cfg.ssl_context is None:
                conn: Connection = SocketConnection(sock, name, host, role, cfg.max_frame, cfg.max_outbuf)
            else:
                conn_or_none = await self._tls_handshake(sock, name, host, role)
                if conn_or_none is None:
                    return
                conn = conn_or_none
            await self._serve_connection(conn)
        finally:
            left = self._per_host[host] - 1
            if left:
                self._per_host[host] = left
            else:
                del self._per_host[host]

    async def _tls_handshake(self, sock: socket.socket, name: str, host: str, role: str) -> Connection | None:
        """Wrap in TLS; a client that cannot complete the handshake is closed without a frame."""
        cfg = self.config
        assert cfg.ssl_context is not None
        stream = trio.SSLStream(
            trio.SocketStream(trio.socket.from_stdlib_socket(sock)), cfg.ssl_context, server_side=True
        )
        self._handshaking += 1
        try:
            with trio.move_on_after(cfg.auth_timeout):
                await stream.do_handshake()
                return StreamConnection(stream, name, host, role, cfg.max_frame, cfg.max_outbuf)
            log.warning("event=tls_error peer=%s error=handshake_timeout", name)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.warning("event=tls_error peer=%s error=%s", name, _first_cause(exc))
        finally:
            self._handshaking -= 1
        await trio.aclose_forcefully(stream)
        return None

    async def _serve_connection(self, conn: Connection) -> None:
        broker = self.broker
        assert broker is not None
        self._connections.add(conn)
        if conn.role == "master":
            conn.peer = broker.connect_master(conn.name, conn)
        else:
            conn.peer = broker.connect_slave(conn.name, conn)
        conn.authenticated = self.config.token is None
        log.info("event=connect role=%s peer=%s", conn.role, conn.name)
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(conn.write_loop)
                reason = await self._read_loop(conn)
                nursery.cancel_scope.cancel()
        finally:
            self._connections.discard(conn)
            conn.closed = True
            if conn.overflowed:
                reason = "outbuf_overflow"
                log.warning(
                    "event=overflow role=%s peer=%s buffered=%d", conn.role, conn.name, len(conn.outbuf)
                )
            broker.disconnect(conn.peer)
            self._kick()
            conn.close()
            log.info("event=disconnect role=%s peer=%s reason=%s", conn.role, conn.name, reason)

    async def _read_loop(self, conn: Connection) -> str:
        """Read until the peer leaves; returns why, for the disconnect log line.

        Two deadlines bound a connection that sends too little: a frame that
        has started must complete within `frame_timeout` (slowloris), and a
        connection must authenticate within `auth_timeout` when a token is set.
        Outside both, receives are unbounded and cost no timer.
        """
        broker = self.broker
        assert broker is not None
        peer = conn.peer
        assert peer is not None
        cfg = self.config
        decoder = conn.decoder
        receive = broker.receive
        inf = float("inf")
        auth_deadline = inf if conn.authenticated else trio.current_time() + cfg.auth_timeout
        frame_deadline = inf
        while True:
            deadline = auth_deadline if auth_deadline < frame_deadline else frame_deadline
            if deadline == inf:
                data = await conn.receive_some()
            else:
                data = b""
                with trio.move_on_at(deadline) as timer:
                    data = await conn.receive_some()
                if timer.cancelled_caught:
                    if not conn.authenticated:
                        return await self._hang_up(conn, {"error": "unauthorized", "reason": "timeout"}, "auth_timeout")
                    log.warning("event=slow_frame peer=%s pending=%d", conn.name, decoder.pending)
                    frame = {"error": "frame_timeout", "reason": cfg.frame_timeout}
                    return await self._hang_up(conn, frame, "frame_timeout")
            if not data:
                return "eof" if not decoder.pending else "eof_mid_frame"
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                frames = exc.frames if isinstance(exc, FrameTooLargeWithFrames) else []
                if conn.authenticated:
                    for payload in frames:
                        receive(peer, payload)
                log.warning("event=size_error peer=%s length=%d", conn.name, exc.length)
                # The stream is out of sync: say why, then hang up.
                return await self._hang_up(conn, {"error": "size_error", "reason": "length too large"}, "size_error")
            if decoder.pending:
                if frames or frame_deadline == inf:
                    frame_deadline = trio.current_time() + cfg.frame_timeout
            else:
                frame_deadline = inf
            if not frames:
                continue
            if not conn.authenticated:
                if not auth_frame_ok(frames[0], cfg.token or ""):
                    log.warning("event=unauthorized peer=%s role=%s", conn.name, conn.role)
                    return await self._hang_up(conn, {"error": "unauthorized", "reason": "auth"}, "unauthorized")
                conn.authenticated = True
                auth_deadline = inf
                peer.outbox.append(OK_FRAME)
                broker.dirty.add(peer)
                frames = frames[1:]
            for payload in frames:
                receive(peer, payload)
            self._flush_slaves()

    async def _hang_up(self, conn: Connection, frame: dict[str, Any], reason: str) -> str:
        """Send one last error frame, then close the connection."""
        peer = conn.peer
        assert peer is not None and self.broker is not None
        peer.outbox.append(frame)
        self.broker.dirty.add(peer)
        self._flush()
        await _linger_close(conn)
        return reason

    # ------------------------------------------------------------ output and time

    def _kick(self) -> None:
        """Ask the flusher to run once this scheduling round is over."""
        if not self._flush_pending:
            self._flush_pending = True
            self._flush_lot.unpark()

    async def _flusher(self) -> None:
        while True:
            await self._flush_lot.park()
            self._flush_pending = False
            self._flush()

    def _flush_slaves(self) -> None:
        """Write to slaves now; leave masters to the flusher.

        Called after each receive: a slave's next job is what keeps work
        moving, so it leaves at once, while results to masters wait for the end
        of the scheduling round, where results from many slaves to one master
        coalesce into one write.
        """
        broker = self.broker
        assert broker is not None
        if broker.timers_changed:
            self._timer_lot.unpark()
        dirty = broker.dirty
        if not dirty:
            return
        slaves = [peer for peer in dirty if type(peer) is not MasterPeer]
        if slaves:
            dirty.difference_update(slaves)
            self._write_peers(slaves)
        if dirty:
            self._kick()

    def _flush(self) -> None:
        broker = self.broker
        assert broker is not None
        if broker.timers_changed:
            self._timer_lot.unpark()
        if broker.dirty:
            self._write_peers(broker.take_dirty())

    def _write_peers(self, peers: list[Peer]) -> None:
        for peer in peers:
            conn: Connection = peer.transport
            out = peer.outbox
            peer.outbox = []
            if conn.closed:
                continue
            if len(out) == 1:
                item = out[0]
                conn.write(item if type(item) is bytes else encode_frame(item))
            else:
                conn.write(
                    b"".join([item if type(item) is bytes else encode_frame(item) for item in out])
                )

    async def _timer(self) -> None:
        """Fire job timeouts and result expiry at the broker's next deadline."""
        broker = self.broker
        assert broker is not None
        while True:
            deadline = broker.next_deadline()
            with trio.move_on_at(deadline):
                await self._timer_lot.park()
            broker.tick(trio.current_time())
            self._flush()

    # ------------------------------------------------------------ introspection

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def masters(self) -> list[MasterPeer]:
        assert self.broker is not None
        return list(self.broker.masters)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.create_server((host, port), backlog=4096)
    sock.setblocking(False)
    return sock


def _peer_name(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


async def _linger_close(conn: Connection) -> None:
    """Write what is queued, send EOF, and read until the peer closes (bounded).

    Closing a socket that still has unread input makes the kernel send a
    reset, which can destroy the error frame we just wrote before the client
    reads it; so read and discard for a moment first.
    """
    conn.start_closing()
    with trio.move_on_after(REFUSAL_LINGER):
        await conn.wait_drained()
        while await conn.receive_some():
            pass


async def _refuse(sock: socket.socket, frame: bytes | None) -> None:
    """Tell a connection we will not serve it why, then close it."""
    try:
        if frame is not None:
            sock.send(frame)
        sock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(REFUSAL_LINGER):
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    if not sock.recv(65536):
                        break
                except BlockingIOError:
                    continue
    except OSError:
        pass
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


def _first_cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    return str(cause) or type(cause).__name__
