"""beanstalkd's text protocol, used as a job server with a reply tube per master.

Masters ``put`` jobs into tube ``jobs`` on one connection (``INSERTED id``)
and read results from their own tube ``r<master>`` on a second one:
``reserve`` → ``RESERVED id bytes`` + data, then ``delete id``.  A blocking
``reserve`` stalls every command behind it on its connection, hence the two
connections.  The master keeps one ``reserve`` outstanding per job in flight,
so the server always has a reader for the next result and never blocks on a
reserve no result will ever satisfy.

Workers ``watch jobs``, ``ignore default``, then loop: ``reserve``, put the
echo into the master's reply tube (``use r<master>`` when it changes),
``delete`` the job, ``reserve`` again, all in one write.
"""

from __future__ import annotations

from .bodies import BodyMaker, parse_ids
from .wire import Bytes, Result, note_error

__all__ = ["TTR", "BeanstalkMaster", "BeanstalkWorker", "split_replies"]

#: Seconds a reserved job may stay undeleted before beanstalkd hands it out
#: again; far beyond any run's deadline so a slow run cannot cause a retry.
TTR = 3600


def split_replies(buf: bytearray) -> list[tuple[bytes, bytes | None]]:
    """Remove complete replies from ``buf``: (status line, data or None).

    Only ``RESERVED`` replies carry data here (``RESERVED id bytes``).
    """
    replies: list[tuple[bytes, bytes | None]] = []
    pos = 0
    find = buf.find
    while True:
        eol = find(b"\r\n", pos)
        if eol < 0:
            break
        line = bytes(buf[pos:eol])
        if line.startswith(b"RESERVED "):
            size = int(line.rsplit(b" ", 1)[1])
            stop = eol + 2 + size + 2
            if stop > len(buf):
                break
            replies.append((line, bytes(buf[eol + 2 : stop - 2])))
            pos = stop
        else:
            replies.append((line, None))
            pos = eol + 2
    if pos:
        del buf[:pos]
    return replies


class BeanstalkMaster:
    __slots__ = ("_bufs", "acked", "bodies", "channels", "errors", "master", "out")

    def __init__(self, master: int, bodies: BodyMaker) -> None:
        self.master = master
        self.bodies = bodies
        self.channels = 2
        self.out = [bytearray(), bytearray()]
        self.acked = 0
        self.errors: list[str] = []
        self._bufs = [bytearray(), bytearray()]

    def greet(self) -> None:
        self.out[0] += b"use jobs\r\n"
        self.out[1] += b"watch r%d\r\nignore default\r\n" % self.master

    def submit(self, first: int, count: int) -> None:
        make = self.bodies.make
        m = self.master
        puts = self.out[0]
        for jid in range(first, first + count):
            body = make(m, jid)
            puts += b"put 0 0 %d %d\r\n" % (TTR, len(body))
            puts += body
            puts += b"\r\n"
        self.out[1] += b"reserve\r\n" * count

    def feed(self, channel: int, data: Bytes) -> list[Result]:
        buf = self._bufs[channel]
        buf += data
        results: list[Result] = []
        if channel == 0:
            for line, _ in split_replies(buf):
                if line.startswith(b"INSERTED"):
                    self.acked += 1
                elif not line.startswith(b"USING"):
                    note_error(self.errors, line)
            return results
        make = self.bodies.make
        deletes = self.out[1]
        for line, body in split_replies(buf):
            if body is not None:
                deletes += b"delete %s\r\n" % line.split(b" ", 2)[1]
                try:
                    m, jid = parse_ids(body)
                except ValueError:
                    note_error(self.errors, b"result with a foreign body: " + body[:80])
                    continue
                results.append((jid, m == self.master and body == make(m, jid)))
            elif not (line == b"DELETED" or line.startswith(b"WATCHING")):
                note_error(self.errors, line)
        return results


class BeanstalkWorker:
    __slots__ = ("_buf", "_tube", "_watching", "errors", "jobs", "ready")

    def __init__(self) -> None:
        self.ready = False
        self.jobs = 0
        self.errors: list[str] = []
        self._buf = bytearray()
        self._tube = -1
        self._watching = 0

    def greet(self) -> bytes:
        return b"watch jobs\r\nignore default\r\nreserve\r\n"

    def feed(self, data: Bytes) -> bytes:
        buf = self._buf
        buf += data
        reply = bytearray()
        for line, body in split_replies(buf):
            if body is not None:
                job = line.split(b" ", 2)[1]
                try:
                    master, _ = parse_ids(body)
                except ValueError:
                    note_error(self.errors, b"job with a foreign body: " + body[:80])
                    master = self._tube if self._tube >= 0 else 0
                if master != self._tube:
                    reply += b"use r%d\r\n" % master
                    self._tube = master
                reply += b"put 0 0 %d %d\r\n" % (TTR, len(body))
                reply += body
                reply += b"\r\ndelete %s\r\nreserve\r\n" % job
                self.jobs += 1
            elif line.startswith(b"WATCHING"):
                self._watching += 1
                if self._watching >= 2:
                    self.ready = True
            elif not (
                line == b"DELETED" or line.startswith(b"INSERTED") or line.startswith(b"USING")
            ):
                note_error(self.errors, line)
        return bytes(reply)
