"""The two kinds of load-generator process: echoing workers and submitting masters.

Each process drives many non-blocking sockets from one `selectors` loop: one
``recv`` of up to 256 KiB per readable socket, every frame in it handled at
once, and one ``send`` per socket per loop turn.  No task, thread or object is
created per job; per-job state is two slots in preallocated arrays.  That keeps
the generator's CPU small next to the server's on a 2-core machine.

The orchestrator (`benchmarks.loadgen`) talks to each process over a
`multiprocessing` pipe: ``ready`` once connected (and, unless held, joined),
then ``go``; masters may report ``acked`` (deep-queue mode) and finally send
their report; workers run until ``stop`` or their deadline.

Timestamps are `time.perf_counter()`, which is CLOCK_MONOTONIC on Linux and so
comparable between processes.
"""

from __future__ import annotations

import resource
import selectors
import socket
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .bodies import BodyMaker
from .systems import wires
from .wire import MasterWire, WorkerWire, note_error

__all__ = ["MasterPlan", "WorkerPlan", "master_main", "worker_main"]

RECV = 256 * 1024
# Why recv_into: `sock.recv(256 KiB)` allocates a 256 KiB bytes object per
# call, above glibc's mmap threshold, so every receive also costs an mmap, an
# mremap and a munmap (seen with strace -c).  One reused buffer avoids all three.
#: Stop generating submits while this much is still unsent on a connection:
#: a deep queue must not be built as one 100 MB buffer in the generator.
HIGH_WATER = 1 << 20
#: Most submits built in one go for one connection.
BATCH = 4096

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


@dataclass
class WorkerPlan:
    system: str
    address: tuple[str, int]
    connections: int
    deadline: float  # perf_counter() value at which to give up
    hold: bool = False  # connect now, join only on "go" (deep-queue runs)


@dataclass
class MasterPlan:
    system: str
    address: tuple[str, int]
    masters: list[tuple[int, int, int]]  # (master index, first job id, job count)
    window: int  # jobs in flight per master
    body: int
    deadline: float
    report_acked: bool = False  # tell the orchestrator when every submit is acked


@dataclass
class MasterReport:
    submitted: int = 0
    completed: int = 0
    duplicates: int = 0
    bad_bodies: int = 0
    unexpected: int = 0  # results for ids this process never submitted
    acked: int = 0
    t_go: float = 0.0
    t_acked: float = 0.0
    t_last: float = 0.0
    t_end: float = 0.0  # when the loop stopped (all answered, or the deadline)
    deadline_hit: bool = False
    cpu: tuple[float, float] = (0.0, 0.0)  # this process's (user, system) seconds
    latencies: array = field(default_factory=lambda: array("d"))
    errors: list[str] = field(default_factory=list)


def _own_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (round(usage.ru_utime, 3), round(usage.ru_stime, 3))


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class _Channel:
    """One socket and the bytes still to send on it."""

    __slots__ = ("index", "out", "session", "sock", "writing")

    def __init__(self, sock: socket.socket, out: bytearray, session: Any, index: int) -> None:
        self.sock = sock
        self.out = out
        self.session = session
        self.index = index
        self.writing = False


def _flush(sel: selectors.BaseSelector, ch: _Channel) -> None:
    out = ch.out
    if out:
        try:
            sent = ch.sock.send(out)
        except BlockingIOError:
            sent = 0
        del out[:sent]
    if out and not ch.writing:
        sel.modify(ch.sock, READ | WRITE, ch)
        ch.writing = True
    elif not out and ch.writing:
        sel.modify(ch.sock, READ, ch)
        ch.writing = False


# --------------------------------------------------------------------------- workers


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Echo every job on ``plan.connections`` connections until told to stop."""
    _, worker_factory = wires(plan.system)
    errors: list[str] = []
    sel = selectors.DefaultSelector()
    channels: list[_Channel] = []
    wires_: list[WorkerWire] = []
    try:
        for _ in range(plan.connections):
            w = worker_factory()
            ch = _Channel(_connect(plan.address), bytearray(), w, 0)
            sel.register(ch.sock, READ, ch)
            channels.append(ch)
            wires_.append(w)
    except OSError as exc:
        pipe.send(("failed", f"worker connect: {exc}"))
        return
    sel.register(pipe, READ, None)
    rbuf = bytearray(RECV)
    rview = memoryview(rbuf)

    def greet_all() -> None:
        for ch in channels:
            ch.out += ch.session.greet()
            _flush(sel, ch)

    greeted = not plan.hold
    if greeted:
        greet_all()
    announced = False
    stop = False
    closed = 0
    while not stop:
        now = time.perf_counter()
        if now >= plan.deadline:
            note_error(errors, "worker deadline reached")
            break
        if not announced:
            if plan.hold or all(w.ready for w in wires_):
                pipe.send(("ready", None))
                announced = True
            elif closed or any(w.errors for w in wires_):
                # A refused join (e.g. too_many_connections) would otherwise
                # show up only as a setup timeout.
                first = next((w.errors[0] for w in wires_ if w.errors), None)
                pipe.send(("failed", f"worker setup: {first or errors[0]}"))
                break
        for key, mask in sel.select(min(plan.deadline - now, 1.0)):
            ch = key.data
            if ch is None:
                msg = pipe.recv()
                if msg == "go" and not greeted:
                    greeted = True
                    greet_all()
                elif msg == "stop":
                    stop = True
                continue
            if mask & READ:
                try:
                    n = ch.sock.recv_into(rbuf)
                except BlockingIOError:
                    n = -1
                except OSError as exc:
                    note_error(errors, f"worker recv: {exc}")
                    n = 0
                if n == 0:
                    sel.unregister(ch.sock)
                    ch.sock.close()
                    closed += 1
                    note_error(errors, "server closed a worker connection")
                    continue
                if n > 0:
                    reply = ch.session.feed(rview[:n])
                    if reply:
                        ch.out += reply
                        _flush(sel, ch)
                        continue
            if mask & WRITE:
                _flush(sel, ch)
    for w in wires_:
        for e in w.errors:
            note_error(errors, e)
    pipe.send(
        (
            "report",
            {
                "jobs": sum(w.jobs for w in wires_),
                "closed": closed,
                "errors": errors,
                "cpu": _own_cpu(),
            },
        )
    )
    for ch in channels:
        ch.sock.close()


# --------------------------------------------------------------------------- masters


class _Session:
    """One master (one or two sockets) and the state of its jobs."""

    __slots__ = ("alive", "chans", "count", "done", "first", "inflight", "next", "sent", "wire")

    def __init__(self, wire: MasterWire, first: int, count: int) -> None:
        self.wire = wire
        self.first = first
        self.count = count
        self.next = 0  # jobs submitted so far (offsets from first)
        self.inflight = 0
        self.done = bytearray(count)
        self.sent = array("d", bytes(8 * count))
        self.chans: list[_Channel] = []
        self.alive = True


def master_main(plan: MasterPlan, pipe: Connection) -> None:
    """Submit every job of ``plan`` keeping ``plan.window`` in flight per master."""
    master_factory, _ = wires(plan.system)
    bodies = BodyMaker(plan.body)
    report = MasterReport()
    sel = selectors.DefaultSelector()
    sessions: list[_Session] = []
    try:
        for index, first, count in plan.masters:
            s = _Session(master_factory(index, bodies), first, count)
            s.wire.greet()
            for c in range(s.wire.channels):
                ch = _Channel(_connect(plan.address), s.wire.out[c], s, c)
                sel.register(ch.sock, READ, ch)
                s.chans.append(ch)
                _flush(sel, ch)
            sessions.append(s)
    except OSError as exc:
        pipe.send(("failed", f"master connect: {exc}"))
        return
    pipe.send(("ready", None))
    if pipe.recv() != "go":
        return

    rbuf = bytearray(RECV)
    rview = memoryview(rbuf)
    window = plan.window
    total = sum(s.count for s in sessions)
    remaining = total
    latencies = report.latencies
    acked_reported = not plan.report_acked
    report.t_go = time.perf_counter()

    def top_up(s: _Session, now: float) -> None:
        room = min(window - s.inflight, s.count - s.next, BATCH)
        ch = s.chans[0]
        if room > 0 and len(ch.out) < HIGH_WATER and s.alive:
            start = s.next
            s.wire.submit(s.first + start, room)
            sent = s.sent
            for i in range(start, start + room):
                sent[i] = now
            s.next = start + room
            s.inflight += room

    for s in sessions:
        top_up(s, report.t_go)
        for ch in s.chans:
            _flush(sel, ch)

    while remaining > 0:
        now = time.perf_counter()
        if now >= plan.deadline:
            report.deadline_hit = True
            break
        events = sel.select(min(plan.deadline - now, 1.0))
        if not events:
            continue
        now = time.perf_counter()
        for key, mask in events:
            ch = key.data
            s = ch.session
            if mask & READ:
                try:
                    n = ch.sock.recv_into(rbuf)
                except BlockingIOError:
                    n = -1
                except OSError as exc:
                    note_error(report.errors, f"master recv: {exc}")
                    n = 0
                if n == 0:
                    note_error(report.errors, f"server closed master {s.wire}")
                    for c in s.chans:
                        if c.sock.fileno() >= 0:
                            sel.unregister(c.sock)
                            c.sock.close()
                    if s.alive:
                        s.alive = False
                        remaining -= s.count - int(sum(s.done))
                    continue
                if n > 0:
                    results = s.wire.feed(ch.index, rview[:n])
                    if results:
                        first = s.first
                        done = s.done
                        sent = s.sent
                        for jid, ok in results:
                            i = jid - first
                            if not 0 <= i < s.count or (done[i] == 0 and i >= s.next):
                                report.unexpected += 1
                            elif done[i]:
                                report.duplicates += 1
                            else:
                                done[i] = 1
                                latencies.append(now - sent[i])
                                s.inflight -= 1
                                remaining -= 1
                                if not ok:
                                    report.bad_bodies += 1
                        report.t_last = now
            if mask & WRITE and s.alive:
                _flush(sel, ch)
        for s in sessions:
            if s.alive:
                top_up(s, now)
                for ch in s.chans:
                    if ch.out:
                        _flush(sel, ch)
        if not acked_reported and all(s.wire.acked >= s.count for s in sessions):
            report.t_acked = now
            acked_reported = True
            pipe.send(("acked", now))

    report.t_end = time.perf_counter()
    report.submitted = sum(s.next for s in sessions)
    report.completed = len(latencies)
    report.acked = sum(s.wire.acked for s in sessions)
    for s in sessions:
        for e in s.wire.errors:
            note_error(report.errors, e)
        for ch in s.chans:
            ch.sock.close()
    report.cpu = _own_cpu()
    pipe.send(("report", report))
