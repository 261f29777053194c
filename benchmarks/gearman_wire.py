"""gearmand's binary protocol, the part a plain client and worker use.

Every packet: a 4-byte magic (``\\0REQ`` from clients, ``\\0RES`` from the
server), a 32-bit big-endian type, a 32-bit big-endian size, then the
arguments separated by NUL bytes (the last one may contain NULs).

Client: SUBMIT_JOB(function, unique, data) → JOB_CREATED(handle), later
WORK_COMPLETE(handle, data).  Worker: CAN_DO(function), then GRAB_JOB →
JOB_ASSIGN(handle, function, data) or NO_JOB; after NO_JOB it sends PRE_SLEEP
and waits for the server's NOOP before grabbing again.  That sleep/wake dance
is what real gearman workers (libgearman, python-gearman) do.
"""

from __future__ import annotations

import struct

from .bodies import parse_ids
from .wire import Bytes, OneSocketMaster, Result, note_error

__all__ = ["GearmanMaster", "GearmanWorker", "packet", "split_packets"]

FUNCTION = b"echo"

CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
ERROR = 19
WORK_DATA = 28
WORK_WARNING = 29

REQ = b"\0REQ"
RES = b"\0RES"

_HEAD = struct.Struct(">4sII")
_head_pack = _HEAD.pack
_head_unpack_from = _HEAD.unpack_from

_GRAB = _head_pack(REQ, GRAB_JOB, 0)
_PRE_SLEEP = _head_pack(REQ, PRE_SLEEP, 0)


def packet(kind: int, data: bytes = b"", magic: bytes = REQ) -> bytes:
    return _head_pack(magic, kind, len(data)) + data


def split_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete packet from ``buf``; return (type, data) pairs."""
    packets: list[tuple[int, bytes]] = []
    end = len(buf)
    pos = 0
    while end - pos >= 12:
        magic, kind, size = _head_unpack_from(buf, pos)
        if magic != RES and magic != REQ:
            raise ValueError(f"bad gearman magic {magic!r}")
        stop = pos + 12 + size
        if stop > end:
            break
        packets.append((kind, bytes(buf[pos + 12 : stop])))
        pos = stop
    if pos:
        del buf[:pos]
    return packets


class GearmanMaster(OneSocketMaster):
    """One client connection submitting foreground jobs to function ``echo``.

    The unique id is the job id: gearmand merges jobs that share a unique id,
    so it must differ per job, and an explicit one spares the server a UUID.
    Results are matched by the ids inside the echoed body (see bodies.py).
    """

    __slots__ = ()

    def submit(self, first: int, count: int) -> None:
        make = self.bodies.make
        m = self.master
        out = self.out[0]
        for jid in range(first, first + count):
            data = b"echo\0%d\0%s" % (jid, make(m, jid))
            out += _head_pack(REQ, SUBMIT_JOB, len(data))
            out += data

    def feed(self, channel: int, data: Bytes) -> list[Result]:
        buf = self._buf
        buf += data
        results: list[Result] = []
        make = self.bodies.make
        for kind, args in split_packets(buf):
            if kind == WORK_COMPLETE:
                body = args[args.index(b"\0") + 1 :]
                try:
                    m, jid = parse_ids(body)
                except ValueError:
                    note_error(self.errors, b"result with a foreign body: " + body[:80])
                    continue
                results.append((jid, m == self.master and body == make(m, jid)))
            elif kind == JOB_CREATED:
                self.acked += 1
            elif kind not in (WORK_STATUS, WORK_DATA, WORK_WARNING):
                note_error(self.errors, (kind, args[:200]))
        return results


class GearmanWorker:
    """One worker connection: CAN_DO echo, then grab / complete / grab..."""

    __slots__ = ("_buf", "_sleeping", "errors", "jobs", "ready")

    def __init__(self) -> None:
        self.ready = False
        self.jobs = 0
        self.errors: list[str] = []
        self._buf = bytearray()
        self._sleeping = False

    def greet(self) -> bytes:
        return packet(CAN_DO, FUNCTION) + _GRAB

    def feed(self, data: Bytes) -> bytes:
        buf = self._buf
        buf += data
        reply = bytearray()
        for kind, args in split_packets(buf):
            if kind == JOB_ASSIGN:
                handle, _function, body = args.split(b"\0", 2)
                answer = handle + b"\0" + body
                reply += _head_pack(REQ, WORK_COMPLETE, len(answer))
                reply += answer
                reply += _GRAB
                self.jobs += 1
                self.ready = True
            elif kind == NO_JOB:
                reply += _PRE_SLEEP
                self._sleeping = True
                self.ready = True
            elif kind == NOOP:
                # A NOOP only wakes a sleeping worker; one that is already
                # grabbing would otherwise send a second GRAB_JOB and hold two
                # answers in flight.
                if self._sleeping:
                    self._sleeping = False
                    reply += _GRAB
            else:
                note_error(self.errors, (kind, args[:200]))
        return bytes(reply)
