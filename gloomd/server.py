"""The trio layer: sockets in, broker calls, sockets out.  Nothing else.

Why it looks the way it does (each measured; see benchmarks/README.md):

* Every frame of one receive is handled synchronously, with no await inside
  message handling, so a receive holding fifty responds costs one pass.
* Output is never written from inside the broker.  The broker marks peers
  dirty and the server writes each dirty peer's outbox as one buffer, once
  per batch: a slave's ok and its next job leave together, and the results
  from many slaves to one master leave in one write.
* Plain TCP connections are read by one `Reactor` task over a private epoll
  set instead of a task per connection (see `gloomd.reactor` for the
  measurement), and written directly from the flush when the kernel has room.
* TLS connections (trio's `SSLStream`) keep a reader and a writer task each;
  they share everything else with plain ones: above all `on_data`, which
  feeds what arrived to the connection's `gloomd.ingest.Ingest` (framing,
  decoding, auth, validation, the broker) and keeps the slow-frame deadline
  and the back-pressure that only this layer can judge.

Structure: `run` owns one nursery with the two accept loops, the reactor, the
flusher (for output produced outside a reactor batch: TLS reads, timers,
shutdown) and the timer; TLS connections are tasks in it too, so cancelling
`run` tears everything down.

No frame may stop the daemon (issue 18).  Each connection is a boundary: an
exception raised while handling its input or output is logged once
(`event=internal_error`, with the traceback), answered
`{"error":"internal_error","reason":...}` where the stream allows, and ends
that connection alone; the reactor (plain TCP) and the TLS tasks catch it,
`internal_error` below answers it.  The broker validates before it mutates,
so what it was doing leaves no half-changed state behind.
"""

from __future__ import annotations

import errno
import gc
import logging
import socket
import time
from typing import Any

import trio

from gloomwire.framing import (
    SPLICE_MIN,
    FrameTooLarge,
    FrameTooLargeWithFrames,
    encode_frame,
    encode_into,
)
from gloomwire.logformat import event
from gloomwire.vocabulary import OK_FRAME, error

from .broker import Broker, Peer
from .config import Config
from .fdlimit import descriptor_limit
from .holds import divert, take_ready
from .ingest import Ingest, ingest_for
from .reactor import HELD_WAIT, LINGER, Reactor
from .replay import Restored, restore
from .transport import INF, Connection, PlainConnection, StreamConnection
from .writer import JournalWriter

#: Reads of what a refused connection already sent, before its socket is
#: closed (unread input would make the close a reset; see `_refuse`).
_REFUSE_READS = 16

__all__ = ["GloomServer", "dropped_detached"]

log = logging.getLogger("gloomd.server")


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
        self._connections: set[Connection[Ingest]] = set()
        self._per_host: dict[str, int] = {}
        self._handshaking = 0  # TLS connections accepted but not yet serving
        self._reactor = Reactor(self)
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._flush_pending = False
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._accept_scopes: list[trio.CancelScope] = []
        self._run_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        #: The journal's writer (`gloomd.writer`), None without a journal.
        self.journal: JournalWriter | None = None
        #: The broker when it is the cluster's (`--cluster`), else None.  Any:
        #: `gloomd.cluster.broker` is imported only in cluster mode (it brings
        #: the Redis client), and compiled code would check a declared type.
        self.cluster: Any = None

    # ------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: trio.TaskStatus[GloomServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        cfg = self.config
        # The run's clock itself: `trio.current_time` reaches the same method
        # through three more calls, and the broker reads it once per job.
        clock = trio.lowlevel.current_clock().current_time
        if cfg.cluster is not None:
            from .cluster.broker import ClusterBroker

            self.broker = self.cluster = ClusterBroker(
                cfg.cluster, cfg.limits, clock=clock, max_outbox=cfg.max_outbuf
            )
        else:
            self.broker = Broker(cfg.limits, clock=clock, max_outbox=cfg.max_outbuf)
        if cfg.journal is not None:
            self._replay(cfg)
        master_sock = _listen(cfg)
        slave_sock = _listen(cfg, master=False)
        self.master_port = master_sock.getsockname()[1]
        self.slave_port = slave_sock.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._run_scope = nursery.cancel_scope
                await nursery.start(self._reactor.run)
                if self.journal is not None:
                    await nursery.start(self.journal.run)
                cluster = self.cluster
                if cluster is not None:
                    # Redis unreachable at start raises here (BackendUnavailable).
                    await nursery.start(cluster.engine.run)
                    await nursery.start(cluster.run, self.write_frames, self.flush)
                nursery.start_soon(self._flusher)
                nursery.start_soon(self._timer)
                nursery.start_soon(self._accept_loop, master_sock, "master")
                nursery.start_soon(self._accept_loop, slave_sock, "slave")
                event(
                    log,
                    "listening",
                    host=cfg.host,
                    master_port=self.master_port,
                    slave_port=self.slave_port,
                    tls="on" if cfg.ssl_context is not None else "off",
                    auth="on" if cfg.token is not None else "off",
                    descriptors=descriptor_limit(),
                )
                task_status.started(self)
        finally:
            for sock in (master_sock, slave_sock):
                trio.lowlevel.notify_closing(sock)
                sock.close()
            # In-process masters (`gloomd.local`) lose their seat with the
            # run, as connections do: their waiting calls fail now.
            for peer in list(self.broker.internal):
                if peer.transport is not None:
                    peer.transport.abort()

    def _replay(self, cfg: Config) -> None:
        """Rebuild the broker from the journal (before listening), then journal it."""
        assert self.broker is not None and cfg.journal is not None
        self.journal = JournalWriter(cfg.journal, self.broker, self.write_frames, self.flush)
        self.broker.journal = self.journal.durable
        restored = cfg.restored or Restored()
        gc.disable()  # (see `cli._open_journal`)
        try:
            counts = restore(self.broker, restored, time.time(), trio.current_time())
        finally:
            gc.enable()
        self.journal.attach()
        event(
            log, "restore",
            **{name: counts[name] for name in ("queued", "delayed", "waiting", "dead", "results")},
            requeued=counts["requeued"], seconds=round(counts["seconds"], 3),
        )  # fmt: skip

    async def shutdown(self) -> None:
        """Stop accepting, fail every unanswered job with HALTED, flush, close.

        With a journal, detached jobs are kept instead: running ones are
        journaled back to queued and the last batch committed first.
        Returns once every connection has been written out and sent EOF, or
        the grace period ran out; `run` then returns.
        """
        for scope in self._accept_scopes:
            scope.cancel()
        assert self.broker is not None
        journal = self.journal
        kept = journal is not None or self.cluster is not None
        if journal is not None:
            await journal.finish()
        # Without a journal, queued detached jobs whose master left die with the process.
        dropped = 0 if kept else dropped_detached(self.broker)
        if self.cluster is not None:
            # The jobs live in Redis: the daemon leaves the cluster.
            halted = await self.cluster.leave()
        else:
            halted = self.broker.halt(keep_detached=kept)
        if dropped:
            event(
                log, "shutdown", logging.WARNING, halted_jobs=halted, dropped_detached=dropped,
                connections=len(self._connections),
                note="detached jobs whose master had left are lost: run with --journal to keep"
                " them",
            )  # fmt: skip
        else:
            event(
                log, "shutdown", halted_jobs=halted, dropped_detached=0,
                connections=len(self._connections),
            )  # fmt: skip
        self.flush()
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
                            event(log, "accept_error", logging.WARNING, error=str(exc))
                            await trio.sleep(0.1)
                        break
                    # TCP_NODELAY and keepalive come from the listening socket.
                    try:
                        self._accepted(sock, addr, role, nursery)
                    except Exception as exc:
                        # A connection reset before we saw it, or a bug: it
                        # costs this connection only, never the accept loop.
                        event(
                            log, "internal_error", logging.ERROR, stage="accept",
                            error=type(exc).__name__, exc_info=exc,
                        )  # fmt: skip
                        sock.close()

    def _accepted(self, sock: socket.socket, addr: Any, role: str, nursery: trio.Nursery) -> None:
        cfg = self.config
        sock.setblocking(False)
        host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        name = _peer_name(addr)
        refusal = self._refusal(host)
        if refusal is not None:
            event(log, "refused", logging.WARNING, reason=refusal["error"], peer=name)
            # Under TLS a plaintext frame would be garbage: just close.
            _refuse(sock, None if cfg.ssl_context is not None else encode_frame(refusal))
            return
        self._per_host[host] = self._per_host.get(host, 0) + 1
        if cfg.ssl_context is None:
            conn: PlainConnection[Ingest] = PlainConnection(
                sock,
                self._seat(name, role),
                name,
                host,
                role,
                cfg.max_outbuf,
                self._reactor.update,
                self._reactor.drop,
                cfg.output_high_water,
                cfg.write_timeout,
            )
            self._admit(conn)
            self._reactor.add(conn)
        else:
            nursery.start_soon(self._serve_tls, sock, name, host, role)

    def _refusal(self, host: str) -> dict[str, Any] | None:
        cfg = self.config
        if len(self._connections) + self._handshaking >= cfg.max_connections:
            return error("too_many_connections", cfg.max_connections)
        if self._per_host.get(host, 0) >= cfg.max_per_host:
            return error("too_many_connections", cfg.max_per_host)
        return None

    def _seat(self, name: str, role: str) -> Ingest:
        """A new peer at the broker, and the ingest that will feed it."""
        broker = self.broker
        assert broker is not None
        peer: Peer = broker.connect_master(name) if role == "master" else broker.connect_slave(name)
        cfg = self.config
        return ingest_for(broker, peer, max_frame=cfg.max_frame, token=cfg.token)

    def _admit(self, conn: Connection[Ingest]) -> None:
        """Tie a connection to its peer and start its clocks."""
        self._connections.add(conn)
        conn.ingest.peer.transport = conn
        if not conn.ingest.authenticated:
            conn.auth_deadline = trio.current_time() + self.config.auth_timeout
        event(log, "connect", role=conn.role, peer=conn.name)

    def release(self, conn: Connection[Ingest], reason: str) -> None:
        """The connection is over for the broker: requeue, free, log (once).

        Its buffers go now (the partial frame, the stash), and the peer lets
        go of the connection: the two no longer keep each other alive, so
        nothing of it waits for the garbage collector (issue 18: 60 closed
        connections held 1 GB until the next full collection).
        """
        if conn.released:
            return
        conn.released = True
        self._connections.discard(conn)
        self._forget_host(conn.host)
        peer = conn.ingest.peer
        assert self.broker is not None
        if conn.overflowed or peer.overflowed:
            reason = "outbuf_overflow"
            event(
                log, "overflow", logging.WARNING, role=conn.role, peer=conn.name,
                buffered=conn.unsent() + peer.pending,
            )  # fmt: skip
        elif reason == "write_timeout":
            event(
                log, "write_timeout", logging.WARNING, role=conn.role, peer=conn.name,
                buffered=conn.unsent(),
            )  # fmt: skip
        try:
            self.broker.disconnect(peer)
        except Exception as exc:
            event(
                log, "internal_error", logging.ERROR, stage="disconnect", peer=conn.name,
                error=type(exc).__name__, exc_info=exc,
            )  # fmt: skip
        peer.transport = None
        conn.free()
        self._kick()
        event(log, "disconnect", role=conn.role, peer=conn.name, reason=reason)

    def internal_error(self, conn: Connection[Ingest], exc: Exception) -> str:
        """Handling `conn` raised `exc`: log it once, queue the error frame,
        and return the reason to hang up.  Only this connection ends."""
        event(
            log, "internal_error", logging.ERROR, role=conn.role, peer=conn.name,
            error=type(exc).__name__, exc_info=exc,
        )  # fmt: skip
        conn.stash = None
        conn.paused = False
        if not conn.released and self.broker is not None:
            self.broker.send(conn.ingest.peer, error("internal_error", type(exc).__name__))
        return "internal_error"

    # ------------------------------------------------------------ bytes in (both transports)

    def on_data(self, conn: Connection[Ingest], data: bytes | memoryview) -> str | None:
        """Feed received bytes to the connection's ingest.

        Returns None, or the reason to hang up after the final error frame
        (already queued): the stream is out of sync, or the peer is refused.
        """
        ingest = conn.ingest
        decoder = ingest.decoder
        try:
            frames = decoder.feed(data)
        except FrameTooLarge as exc:
            if ingest.authenticated and isinstance(exc, FrameTooLargeWithFrames):
                # Sent in sync before the bad header: handled while the
                # output has room (the connection closes after them anyway).
                self._receive(conn, exc.frames)
                conn.stash = None
            event(log, "size_error", logging.WARNING, peer=conn.name, length=exc.length)
            return self._final(conn, error("size_error", "length too large"), "size_error")
        # Slowloris guard: a frame that has started must finish in time.
        if decoder.pending:
            if frames or conn.frame_deadline == INF:
                conn.frame_deadline = trio.current_time() + self.config.frame_timeout
        elif conn.frame_deadline != INF:
            conn.frame_deadline = INF
        if not frames:
            return None
        if not ingest.authenticated:
            if not ingest.authenticate(frames[0]):
                event(log, "unauthorized", logging.WARNING, role=conn.role, peer=conn.name)
                return self._final(conn, error("unauthorized", "auth"), "unauthorized")
            conn.auth_deadline = INF
            del frames[0]
        # `_receive`, inlined: one call less per receive on the hot path.
        receive = ingest.receive
        peer = ingest.peer
        room = conn.high_water - len(conn.outbuf) - conn.in_flight
        frames_left = iter(frames)
        for payload in frames_left:
            receive(payload)
            if peer.pending > room:
                stash = list(frames_left)
                if stash:
                    conn.pause(stash)
                break
        return None

    def _receive(self, conn: Connection[Ingest], frames: list[bytes]) -> None:
        """Hand `frames` to the ingest in order, until the connection's
        output passes its high-water mark; then stash the rest and pause.

        One comparison per frame: replies are encoded as they are queued,
        so `peer.pending` counts the bytes built since the last flush.
        """
        receive = conn.ingest.receive
        peer = conn.ingest.peer
        room = conn.high_water - len(conn.outbuf) - conn.in_flight
        frames_left = iter(frames)
        for payload in frames_left:
            receive(payload)
            if peer.pending > room:
                stash = list(frames_left)
                if stash:
                    conn.pause(stash)
                return

    def on_resume(self, conn: Connection[Ingest]) -> str | None:
        """The paused connection's output drained: handle its stash first."""
        stash = conn.stash
        conn.stash = None
        conn.paused = False
        if stash and not conn.released:
            self._receive(conn, stash)
        return None

    def on_deadline(self, conn: Connection[Ingest]) -> str:
        """The connection's auth or frame deadline passed; queue why, return why."""
        if not conn.ingest.authenticated:
            event(
                log, "unauthorized", logging.WARNING, role=conn.role, peer=conn.name,
                reason="timeout",
            )  # fmt: skip
            return self._final(conn, error("unauthorized", "timeout"), "auth_timeout")
        event(
            log, "slow_frame", logging.WARNING, peer=conn.name,
            pending=conn.ingest.decoder.pending,
        )  # fmt: skip
        timeout = self.config.frame_timeout
        return self._final(conn, error("frame_timeout", timeout), "frame_timeout")

    def _final(self, conn: Connection[Ingest], frame: dict[str, Any], reason: str) -> str:
        assert self.broker is not None
        self.broker.send(conn.ingest.peer, frame)
        return reason

    # ------------------------------------------------------------ TLS connections

    async def _serve_tls(self, sock: socket.socket, name: str, host: str, role: str) -> None:
        try:
            await self._serve_tls_connection(sock, name, host, role)
        except Exception as exc:
            # The boundary of a TLS connection: whatever escaped ends it alone.
            event(
                log, "internal_error", logging.ERROR, role=role, peer=name, stage="tls",
                error=type(exc).__name__, exc_info=exc,
            )  # fmt: skip

    async def _serve_tls_connection(
        self, sock: socket.socket, name: str, host: str, role: str
    ) -> None:
        cfg = self.config
        assert cfg.ssl_context is not None
        stream = trio.SSLStream(
            trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
            cfg.ssl_context,
            server_side=True,
        )
        self._handshaking += 1
        shaken = False
        try:
            with trio.move_on_after(cfg.auth_timeout):
                await stream.do_handshake()
                shaken = True
            if not shaken:
                event(log, "tls_error", logging.WARNING, peer=name, error="handshake_timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A plaintext client, or a bad certificate: closed without a frame.
            event(log, "tls_error", logging.WARNING, peer=name, error=_first_cause(exc))
        finally:
            self._handshaking -= 1
        if not shaken:
            self._forget_host(host)
            await trio.aclose_forcefully(stream)
            return
        conn: StreamConnection[Ingest] = StreamConnection(
            stream,
            self._seat(name, role),
            name,
            host,
            role,
            cfg.max_outbuf,
            cfg.output_high_water,
            cfg.write_timeout,
        )
        self._admit(conn)
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(conn.write_loop)
                reason = await self._tls_read_loop(conn)
                nursery.cancel_scope.cancel()
        finally:
            self.release(conn, "write_timeout" if conn.timed_out else reason)
            conn.close()

    def _forget_host(self, host: str) -> None:
        left = self._per_host.get(host, 1) - 1
        if left:
            self._per_host[host] = left
        else:
            self._per_host.pop(host, None)

    async def _tls_read_loop(self, conn: StreamConnection[Ingest]) -> str:
        reason: str | None
        while True:
            try:
                if conn.paused:
                    await conn.wait_output_low()
                    reason = self.on_resume(conn)
                    self._kick()
                    if reason is None:
                        continue
                else:
                    deadline = conn.deadline
                    data = b""
                    with trio.move_on_at(deadline) as timer:
                        data = await conn.receive_some()
                    if timer.cancelled_caught:
                        reason = self.on_deadline(conn)
                    elif not data:
                        return "eof_mid_frame" if conn.ingest.decoder.pending else "eof"
                    else:
                        reason = self.on_data(conn, data)
                        self._kick()
                        if reason is None:
                            continue
            except Exception as exc:
                reason = self.internal_error(conn, exc)
            # Hang up: write the final frame, wait briefly for it to leave.
            self.flush()
            if self.held(conn):
                # Behind held replies (see `Reactor.hang_up`): `write_frames`
                # starts the closing once they are written.
                conn.hangup = reason
                with trio.move_on_after(HELD_WAIT):
                    await conn.wait_drained()
            conn.start_closing()
            with trio.move_on_after(LINGER):
                await conn.wait_drained()
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
            self.flush()

    def flush(self, urgent_only: bool = False) -> None:
        """Write each dirty peer's outbox as one buffer.

        `urgent_only` writes just the slaves that are handed a job and
        keeps everything else (masters' acks and results, a slave's lone
        ok) for the flush that ends the busy spell; see `Reactor._poll`.
        """
        broker = self.broker
        assert broker is not None
        journal = self.journal
        if journal is not None:
            journal.collect()  # the pass's records, and the replies they hold
        elif self.cluster is not None:
            self.cluster.holds.seal()  # replies held behind steps sent to Redis
        if broker.timers_changed:
            self._timer_lot.unpark()
        if not broker.dirty:
            return
        for peer in broker.take_dirty():
            # Any: an in-process master (gloomd.local) writes like a connection
            # without being one, and compiled code checks a declared type.
            conn: Any = peer.transport
            out = peer.outbox
            if conn is None:  # gone: nothing to write to
                peer.outbox = []
                peer.pending = 0
                continue
            if peer.gated is not None:
                # Replies wait for a commit (`gloomd.holds`): only what came
                # before them may leave, the rest waits behind them.
                if urgent_only and conn.role == "master" and not conn.paused:
                    divert(peer)
                    broker.dirty[peer] = None  # still to write
                    continue
                out = take_ready(peer)
                if not out:
                    continue
            # A paused connection is written at once: that is what resumes it.
            elif urgent_only and (
                (conn.role == "master" and not conn.paused)
                or (len(out) == 1 and out[0] is OK_FRAME)
            ):
                broker.dirty[peer] = None  # still to write
                continue
            else:
                peer.outbox = []
                peer.pending = 0
            if conn.closed:
                continue
            try:
                if peer.overflowed:
                    conn.overflowed = True
                    conn.abort()
                elif len(out) == 1 and type(out[0]) is bytes:
                    conn.write(out[0])
                else:
                    # The frames of every job are encoded here, in one pass
                    # (see `Broker.send`), and joined once (a prefix and its
                    # payload are not joined first); `write` weighs them
                    # against the cap.  With a large frame among them they
                    # are not joined at all (`write_parts`): a 64 KiB body
                    # is then copied by the kernel alone.
                    parts: list[bytes] = []
                    large = False
                    for i in out:
                        if type(i) is bytes:
                            parts.append(i)
                            if len(i) >= SPLICE_MIN:
                                large = True
                        elif encode_into(parts, i):
                            large = True
                    if large:
                        conn.write_parts(parts)
                    else:
                        conn.write(b"".join(parts))
            except Exception as exc:
                self._write_failed(conn, exc)

    def write_frames(self, peer: Peer, frames: list[bytes | dict[str, Any]]) -> None:
        """Write `frames` to `peer` now: replies released by a commit (`gloomd.holds`),
        which go before anything in its outbox."""
        conn: Connection[Any] | None = peer.transport
        if conn is None or conn.closed:
            return
        try:
            conn.write(b"".join([f if type(f) is bytes else encode_frame(f) for f in frames]))
        except Exception as exc:
            self._write_failed(conn, exc)
            return
        if conn.hangup is not None and peer.gated is None:
            # It was hung up while these were held: now the rest of it.
            if isinstance(conn, PlainConnection):
                self._reactor.hang_up(conn, conn.hangup)
            else:
                conn.start_closing()

    def held(self, conn: Connection[Ingest]) -> bool:
        """Are replies to the peer held behind a write (see `Reactor.hang_up`)?"""
        return conn.ingest.peer.gated is not None

    def _write_failed(self, conn: Connection[Any], exc: Exception) -> None:
        """Writing to `conn` raised: the boundary for output (see `internal_error`)."""
        event(
            log, "internal_error", logging.ERROR, role=conn.role, peer=conn.name, stage="write",
            error=type(exc).__name__, exc_info=exc,
        )  # fmt: skip
        try:
            conn.abort()
        except Exception as abort_exc:
            event(
                log, "internal_error", logging.ERROR, peer=conn.name, stage="abort",
                error=type(abort_exc).__name__, exc_info=abort_exc,
            )  # fmt: skip

    async def _timer(self) -> None:
        """Fire job timeouts and result expiry at the broker's next deadline."""
        broker = self.broker
        assert broker is not None
        while True:
            deadline = broker.next_deadline()
            with trio.move_on_at(deadline):
                await self._timer_lot.park()
            try:
                broker.tick(trio.current_time())
            except Exception as exc:
                # Not any one connection's: log it, and keep the clock going
                # (the entry that raised has been taken off the heap).
                event(
                    log, "internal_error", logging.ERROR, stage="timer",
                    error=type(exc).__name__, exc_info=exc,
                )  # fmt: skip
            self.flush()


def dropped_detached(broker: Broker) -> int:
    """Live detached jobs that stopping the daemon loses without telling anyone.

    `Broker.halt` answers every connected master's jobs with HALTED; a
    detached job whose master has left is answered to nobody and, with no
    state on disk, is simply gone after the restart.  The shutdown line
    counts those, from the broker's own state, so that once the journal
    keeps them this is where the count becomes 0.  One pass over the live
    jobs, at shutdown only.
    """
    return sum(1 for job in broker.jobs.values() if job.detached and job.master is None)


def _listen(cfg: Config, master: bool = True) -> socket.socket:
    """A listening socket whose options every accepted socket inherits (Linux
    copies them on accept): no Nagle delay, and TCP keepalive, so that a peer
    whose host vanished is noticed (a slave holding a job without a timeout
    would otherwise hold it for ever)."""
    port = cfg.master_port if master else cfg.slave_port
    sock = socket.create_server((cfg.host, port), backlog=4096)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, cfg.keepalive_idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, cfg.keepalive_interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cfg.keepalive_count)
    return sock


def _peer_name(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr)


def _refuse(sock: socket.socket, frame: bytes | None) -> None:
    """Tell a connection we will not serve it why, and close it at once.

    It used to linger up to a second for the client's EOF (5,000 refusals
    held 11,387 descriptors, issue 18).  Closing with unread input makes the
    kernel send a reset, which can destroy the frame before the client reads
    it, so what already arrived is read and discarded first; a client still
    sending after that may lose the frame, and was told nothing it can use.
    """
    try:
        if frame is not None:
            sock.send(frame)
        for _ in range(_REFUSE_READS):
            if not sock.recv(65536):
                break
    except OSError:  # BlockingIOError included: nothing (more) to read
        pass
    finally:
        sock.close()


def _first_cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    return str(cause) or type(cause).__name__
