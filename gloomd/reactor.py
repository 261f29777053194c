"""One task that reads every plain-TCP connection of a server.

Why not a task per connection?  Measured on the 2-core benchmark machine: a
trio task that parks in `wait_readable` and is woken again costs about 50 us
of CPU per wake-up (the scheduler round, an `epoll_ctl` to re-arm the
one-shot registration, the coroutine switch), against about 30 us for the
entire recv/handle/send of a job.  With a task per connection the server
pays that wake-up for every respond of every slave, and it was most of
gloomd's CPU per job.

So plain connections live in a private, level-triggered epoll set.  This
task waits (through trio, cancellably, with a deadline) for that set to have
events, then handles every ready connection synchronously, then flushes all
output once: one trio wake-up per batch of ready sockets, however many.
Structure is unchanged from the outside: the reactor is one task in the
server's nursery, cancelling it closes every socket it holds, and each wait
has a deadline for the connections' own timeouts (authentication, slow
frames, output that makes no progress, lingering after an error).  TLS
connections are not here: they keep a reader and a writer task each
(`gloomd.transport.StreamConnection`).

Each connection is also a boundary (issue 18): an exception raised while
handling its input or output is logged, answered `internal_error` where the
stream allows, and ends that connection only; every other one is served on.
A paused connection (see `gloomd.transport`) is watched for writability only,
and resumed from the loop once its output is down to the low-water mark.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
from collections.abc import Callable
from typing import Any, Protocol

import trio

from gloomwire.logformat import event

from .transport import INF, RECV_SIZE, PlainConnection

__all__ = ["Reactor", "ReactorClient"]

log = logging.getLogger("gloomd.server")

_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_BROKEN = select.EPOLLHUP | select.EPOLLERR
#: Deadline entries (live or stale) kept before stale ones are swept out.
_DEADLINES_MIN = 1024

#: Seconds a hung-up connection may keep sending before it is closed anyway.
LINGER = 1.0
#: Seconds a hang-up waits for the peer's held replies (a journal commit, a
#: cluster's Redis step: at most its 5 s timeout) before it closes anyway.
HELD_WAIT = 10.0
#: Batches handled back to back while sockets stay ready, before yielding to trio.
BUSY_ROUNDS = 8


class ReactorClient(Protocol):
    """What the reactor needs from the server that owns it."""

    def on_data(self, conn: PlainConnection[Any], data: bytes | memoryview) -> str | None:
        """Handle bytes; a returned reason means: hang up (final frame queued)."""

    def on_deadline(self, conn: PlainConnection[Any]) -> str:
        """A connection's deadline passed; queue its final frame, return why."""

    def on_resume(self, conn: PlainConnection[Any]) -> str | None:
        """A paused connection drained: handle what it stashed (as `on_data`)."""

    def internal_error(self, conn: PlainConnection[Any], exc: Exception) -> str:
        """Handling `conn` raised: log, queue `internal_error`, return why to hang up."""

    def release(self, conn: PlainConnection[Any], reason: str) -> None:
        """The peer is gone for the broker (called once per connection)."""

    def flush(self, urgent_only: bool = False) -> None:
        """Write every peer's pending output (or only what cannot wait)."""

    def held(self, conn: PlainConnection[Any]) -> bool:
        """Are replies to the peer held behind a write not yet done (`gloomd.holds`)?"""


class Reactor:
    def __init__(
        self, client: ReactorClient, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self._client = client
        self._clock = clock
        self._epoll = select.epoll()
        self._conns: dict[int, PlainConnection[Any]] = {}
        # (when, serial, fd): no reference to the connection, so that a closed
        # one (and its buffers) is freed at once, not when its entry comes up.
        self._deadlines: list[tuple[float, int, int]] = []
        self._serials = itertools.count(1)
        self._wait_scope: trio.CancelScope | None = None  # the scope of the waits, while it lives
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)

    # ------------------------------------------------------------ membership

    def add(self, conn: PlainConnection[Any]) -> None:
        conn.serial = next(self._serials)
        conn.mask = _IN
        self._conns[conn.fd] = conn
        self._epoll.register(conn.fd, _IN)
        self._schedule(conn, conn.deadline)

    def update(self, conn: PlainConnection[Any]) -> None:
        """Register what the connection waits for (level-triggered epoll).

        Readable unless paused; writable while bytes wait, and while paused
        (a paused connection with nothing buffered is writable as soon as the
        kernel has room, which is what resumes it).  Output waiting, or a
        pause, also arms the write deadline (see `_write_expired`).
        """
        if self._conns.get(conn.fd) is not conn:
            return
        paused = conn.paused
        waiting = bool(conn.outbuf)
        mask = (_OUT if waiting or paused else 0) | (0 if paused else _IN)
        if mask != conn.mask:
            conn.mask = mask
            self._epoll.modify(conn.fd, mask)
        if not (waiting or paused):
            conn.write_deadline = INF
        elif conn.write_deadline == INF and conn.write_timeout < INF:
            self._arm_write(conn)

    def _arm_write(self, conn: PlainConnection[Any]) -> None:
        conn.write_mark = conn.progress
        conn.write_deadline = self._clock() + conn.write_timeout
        self._schedule(conn, conn.write_deadline)

    def _write_expired(self, conn: PlainConnection[Any]) -> None:
        """Output has waited a whole write timeout: drop the connection if the
        peer took none of it meanwhile, else give it another period.  (Checked
        here, lazily, so that progress costs a counter, not a clock read and a
        heap push per send.)"""
        if conn.progress != conn.write_mark:
            self._arm_write(conn)
        else:
            self.drop(conn, "write_timeout")

    def drop(self, conn: PlainConnection[Any], reason: str = "closed") -> None:
        """Forget and close a connection, telling the server first."""
        conn.closed = True
        if not conn.released:
            self._client.release(conn, reason)
        if self._conns.get(conn.fd) is conn:  # not a later connection on a reused fd
            del self._conns[conn.fd]
            self._epoll.unregister(conn.fd)
            conn.sock.close()
        conn.free()

    def hang_up(self, conn: PlainConnection[Any], reason: str) -> None:
        """Release the peer now; write its final frame, then close.

        Closing a socket that still has unread input makes the kernel send
        a reset, which can destroy the error frame we just wrote before the
        client reads it; so send EOF once written, discard input until the
        client closes, and close after at most LINGER seconds.
        """
        self._client.flush()  # the final frame leaves before the peer is forgotten
        if self._client.held(conn):
            # Answers to the frames before the bad one wait for a write (a
            # journal commit, a cluster's Redis step), and the final frame
            # behind them: the peer is released once they are written (the
            # server calls this again), or after HELD_WAIT.  Input meanwhile
            # is discarded.
            conn.hangup = reason
            conn.lingering = True
            conn.auth_deadline = conn.frame_deadline = INF
            conn.linger_deadline = self._clock() + HELD_WAIT
            self._schedule(conn, conn.linger_deadline)
            conn.paused = False
            self.update(conn)
            return
        conn.hangup = None
        self._client.release(conn, reason)
        conn.lingering = True
        conn.auth_deadline = conn.frame_deadline = conn.write_deadline = INF
        conn.linger_deadline = self._clock() + LINGER
        self._schedule(conn, conn.linger_deadline)
        conn.paused = False  # read again, to discard (see `_readable`)
        self.update(conn)
        conn.start_closing()

    def _crashed(self, conn: PlainConnection[Any], exc: Exception) -> None:
        """Handling `conn` raised: end it alone (the boundary of issue 18)."""
        try:
            reason = self._client.internal_error(conn, exc)
            if not conn.closed:
                self.hang_up(conn, reason)
        except Exception as second:  # not `exc`: an except name is deleted after its block
            event(
                log, "internal_error", logging.ERROR, peer=conn.name, stage="hang_up",
                error=type(second).__name__, exc_info=second,
            )  # fmt: skip
            self.drop(conn, "internal_error")

    def _resume(self, conn: PlainConnection[Any]) -> None:
        reason = self._client.on_resume(conn)
        if reason is not None:
            self.hang_up(conn, reason)
        else:
            self.update(conn)

    # ------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        epoll = self._epoll
        task_status.started()
        try:
            while True:
                # One cancel scope per deadline that fires, not one per wait:
                # entering and leaving a scope cost about 20 us of CPU per
                # wake-up (measured), as much as handling a job.  `_schedule`
                # moves the deadline earlier when a connection needs it; a
                # stale (later-cancelled) deadline only costs one extra lap.
                first = self._deadlines[0][0] if self._deadlines else INF
                with trio.CancelScope(deadline=first) as self._wait_scope:
                    while True:
                        await trio.lowlevel.wait_readable(epoll)
                        # While sockets keep being ready, go round without
                        # trio: a non-blocking poll costs one syscall, a trio
                        # wake-up several plus the scheduler.  Bounded, then a
                        # checkpoint, so other tasks (TLS, timers, accept) are
                        # never starved; `wait_readable` is a checkpoint too.
                        for _ in range(BUSY_ROUNDS):
                            if not self._poll():
                                break
                        else:
                            self._client.flush()
                            await trio.lowlevel.checkpoint()
                self._wait_scope = None
                self._expire()
                self._client.flush()
        finally:
            for conn in list(self._conns.values()):
                self.drop(conn, "server_stopped")
            trio.lowlevel.notify_closing(epoll)
            epoll.close()

    def _poll(self) -> bool:
        """Handle every ready socket once, then flush; False if none was ready.

        While sockets keep being ready only slaves handed a job are written:
        they sit idle until it arrives, while a master's results and acks
        (and a slave's lone ok) can gather over the rounds of a busy spell
        and leave in one send when it ends (the round that finds nothing
        ready, or the last one).  Measured on the throughput workload: a
        quarter fewer sends per job.
        """
        conns = self._conns
        ready = self._epoll.poll(0)
        for fd, events in ready:
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                if conn.paused:
                    self._paused_event(conn, events)
                    continue
                if events & _OUT:
                    conn.on_writable()
                if events & _READ_EVENTS and fd in conns:
                    self._readable(conn)
            except Exception as exc:
                self._crashed(conn, exc)
        self._client.flush(urgent_only=bool(ready))
        return bool(ready)

    def _paused_event(self, conn: PlainConnection[Any], events: int) -> None:
        if events & _BROKEN:
            self.drop(conn, "reset")
            return
        conn.on_writable()
        if conn.paused and not conn.closed and conn.output_low():
            self._resume(conn)

    def _readable(self, conn: PlainConnection[Any]) -> None:
        # One buffer for every connection (reads are handled one at a time),
        # then a copy of just what arrived: `recv(256 KiB)` would allocate,
        # zero-fill, shrink and free a fresh 256 KiB block per call, which
        # showed up as mmap/mremap/munmap and page faults on every read.
        try:
            size = conn.sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        # A view: the framing copies it (whole, or frame by frame when it
        # starts with a large frame), before the buffer is read into again.
        data = self._view[:size]
        if conn.lingering:
            if not data:
                self.drop(conn)
            return
        if not data:
            self.drop(conn, "eof_mid_frame" if conn.ingest.decoder.pending else "eof")
            return
        # Only the frame deadline can move here (authenticating clears the
        # other); attributes, not the `deadline` property, on this hot path.
        before = conn.frame_deadline
        reason = self._client.on_data(conn, data)
        if reason is not None:
            self.hang_up(conn, reason)
        elif conn.frame_deadline != before:
            self._schedule(conn, conn.frame_deadline)

    # ------------------------------------------------------------ deadlines

    def _schedule(self, conn: PlainConnection[Any], when: float) -> None:
        if when < INF:
            heap = self._deadlines
            if len(heap) >= _DEADLINES_MIN and len(heap) > 2 * len(self._conns):
                self._sweep()
            heapq.heappush(heap, (when, conn.serial, conn.fd))
            scope = self._wait_scope
            if scope is not None and when < scope.deadline:
                scope.deadline = when  # the loop is waiting: wake it in time

    def _sweep(self) -> None:
        """Drop stale entries: those of closed connections (a connect/close
        storm with a token set leaves one auth deadline per connection) and
        those no connection waits for any more."""
        conns = self._conns
        live = []
        for entry in self._deadlines:
            conn = conns.get(entry[2])
            if conn is not None and conn.serial == entry[1]:
                when = entry[0]
                deadlines = (conn.auth_deadline, conn.frame_deadline, conn.write_deadline)
                if when in deadlines or when == conn.linger_deadline:
                    live.append(entry)
        heapq.heapify(live)
        self._deadlines = live

    def _expire(self) -> None:
        now = self._clock()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            when, serial, fd = heapq.heappop(heap)
            conn = self._conns.get(fd)
            if conn is None or conn.serial != serial:
                continue  # closed since (and the fd maybe reused)
            try:
                if conn.lingering:
                    if when == conn.linger_deadline:
                        self.drop(conn)
                elif when == conn.deadline:
                    if when == conn.write_deadline:
                        self._write_expired(conn)
                    else:
                        self.hang_up(conn, self._client.on_deadline(conn))
            except Exception as exc:
                self._crashed(conn, exc)
            heap = self._deadlines  # a sweep may have replaced it
