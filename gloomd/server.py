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

from .broker import Broker, MasterPeer, Peer
from .config import Config
from .framing import FrameDecoder, FrameTooLarge, FrameTooLargeWithFrames, encode_frame

__all__ = ["GloomServer"]

log = logging.getLogger("gloomd.server")

RECV_SIZE = 256 * 1024
#: Seconds a refused connection is given to read its error frame before close.
REFUSAL_LINGER = 1.0


class Connection:
    """One accepted socket: non-blocking reads and buffered, coalesced writes."""

    __slots__ = (
        "sock",
        "name",
        "role",
        "peer",
        "decoder",
        "outbuf",
        "max_outbuf",
        "scope",
        "closed",
        "closing",
        "overflowed",
        "_writer_lot",
        "_drained",
    )

    def __init__(self, sock: socket.socket, name: str, role: str, config: Config) -> None:
        self.sock = sock
        self.name = name
        self.role = role
        self.peer: Peer | None = None
        self.decoder = FrameDecoder(config.max_frame)
        self.outbuf = bytearray()
        self.max_outbuf = config.max_outbuf
        self.scope: trio.CancelScope | None = None
        self.closed = False
        self.closing = False  # shutting down: half-close once the buffer drains
        self.overflowed = False
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drained = trio.Event()

    async def receive_some(self) -> bytes:
        """Next chunk of bytes, b"" at end of stream or on a reset."""
        sock = self.sock
        # Try first: by the time a connection's task comes round again, its
        # peer has usually answered already (measured: waiting first costs
        # more than the failed recv it saves).
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        else:
            # Data was already there: yield once anyway, so that a busy
            # connection cannot starve the others (and the flusher runs).
            await trio.lowlevel.checkpoint()
            return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""
            return data

    def write(self, data: bytes) -> None:
        """Queue `data`, sending as much as the kernel takes right now."""
        if self.closed:
            return
        if self.outbuf:
            self.outbuf += data
        else:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.abort()
                return
            if sent == len(data):
                return
            self.outbuf += memoryview(data)[sent:]
            self._writer_lot.unpark()
        if len(self.outbuf) > self.max_outbuf:
            # A peer that does not read would make us hold its frames forever.
            self.overflowed = True
            self.abort()

    async def write_loop(self) -> None:
        """Drain what `write` could not send at once; half-close when told to."""
        sock = self.sock
        while True:
            if not self.outbuf:
                if self.closing:
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    self._drained.set()
                    return
                await self._writer_lot.park()
                continue
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(self.outbuf)
            except BlockingIOError:
                continue
            except OSError:
                self.abort()
                return
            del self.outbuf[:sent]

    def start_closing(self) -> None:
        """Finish writing what is queued, then send EOF (shutdown path)."""
        self.closing = True
        self._writer_lot.unpark()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    def abort(self) -> None:
        """Drop the connection now; the reader's cleanup tells the broker."""
        self.closed = True
        if self.scope is not None:
            self.scope.cancel()


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
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._flush_pending = False
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._timer_deadline = float("inf")
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
                    "event=listening host=%s master_port=%d slave_port=%d",
                    cfg.host,
                    self.master_port,
                    self.slave_port,
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
                    name = _peer_name(addr)
                    if len(self._connections) >= self.config.max_connections:
                        log.warning("event=refused reason=too_many_connections peer=%s", name)
                        frame = {"error": "too_many_connections", "reason": self.config.max_connections}
                        nursery.start_soon(_refuse, sock, encode_frame(frame))
                        continue
                    conn = Connection(sock, name, role, self.config)
                    self._connections.add(conn)
                    nursery.start_soon(self._serve, conn)

    # ------------------------------------------------------------ one connection

    async def _serve(self, conn: Connection) -> None:
        broker = self.broker
        assert broker is not None
        if conn.role == "master":
            conn.peer = broker.connect_master(conn.name, conn)
        else:
            conn.peer = broker.connect_slave(conn.name, conn)
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
            trio.lowlevel.notify_closing(conn.sock)
            conn.sock.close()
            log.info("event=disconnect role=%s peer=%s reason=%s", conn.role, conn.name, reason)

    async def _read_loop(self, conn: Connection) -> str:
        broker = self.broker
        assert broker is not None
        peer = conn.peer
        assert peer is not None
        decoder = conn.decoder
        receive = broker.receive
        while True:
            data = await conn.receive_some()
            if not data:
                return "eof" if not decoder.pending else "eof_mid_frame"
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as exc:
                frames = exc.frames if isinstance(exc, FrameTooLargeWithFrames) else []
                for payload in frames:
                    receive(peer, payload)
                peer.outbox.append({"error": "size_error", "reason": "length too large"})
                broker.dirty.add(peer)
                self._flush()
                log.warning("event=size_error peer=%s length=%d", conn.name, exc.length)
                # The stream is out of sync: say why, then hang up.
                await _linger_close(conn)
                return "size_error"
            for payload in frames:
                receive(peer, payload)
            self._flush_slaves()

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


async def _refuse(sock: socket.socket, frame: bytes) -> None:
    """Tell a connection we will not serve it why, then close it."""
    try:
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
