"""The sans-IO interface every system's client side implements.

The drivers (`benchmarks.drivers`) own the sockets and the clock; a wire object
only turns bytes into events and events into bytes, so each protocol is a small
class tested without a server (tests/test_benchmarks_wire.py).  The harness
carries its own codecs on purpose: it measures gloomd, so it must not share
gloomd's framing code and inherit its bugs.

Per-connection objects only: nothing here is allocated per job beyond the
bytes of the job itself, so the generator stays cheap next to the servers.
"""

from __future__ import annotations

from typing import Protocol

from .bodies import BodyMaker

__all__ = ["Bytes", "MasterWire", "OneSocketMaster", "Result", "WorkerWire"]

#: What the drivers feed: a view of their reused receive buffer (see drivers.py).
Bytes = bytes | bytearray | memoryview

#: (job id, body matched the job's expected body)
Result = tuple[int, bool]


class MasterWire(Protocol):
    """Client side of one master: submits jobs, reports their results.

    ``channels`` is the number of sockets one master needs (beanstalkd reads
    results on a second connection, because a blocked ``reserve`` would stall
    the puts behind it).  Outgoing bytes accumulate in ``out[channel]``; the
    driver sends them and deletes what was sent.
    """

    channels: int
    out: list[bytearray]
    acked: int  # submits the server acknowledged (ok / JOB_CREATED / INSERTED)
    errors: list[str]

    def greet(self) -> None:
        """Queue whatever the connection must say before its first submit."""

    def submit(self, first: int, count: int) -> None:
        """Queue submits for job ids ``first`` .. ``first + count - 1``."""

    def feed(self, channel: int, data: Bytes) -> list[Result]:
        """Consume bytes received on ``channel``; return the results they completed."""
        ...


class WorkerWire(Protocol):
    """Client side of one echoing slave/worker, one job at a time."""

    ready: bool  # the server has acknowledged the greeting
    jobs: int  # jobs echoed so far
    errors: list[str]

    def greet(self) -> bytes:
        """Bytes that register this worker (join / CAN_DO / watch)."""
        ...

    def feed(self, data: Bytes) -> bytes:
        """Consume received bytes; return the bytes to send in reply (maybe empty)."""
        ...


class MasterFactory(Protocol):
    def __call__(self, master: int, bodies: BodyMaker) -> MasterWire: ...


class WorkerFactory(Protocol):
    def __call__(self) -> WorkerWire: ...


def note_error(errors: list[str], text: object) -> None:
    """Keep the first few errors only: a broken run must not fill memory with them."""
    if len(errors) < 20:
        errors.append(str(text)[:300])


class OneSocketMaster:
    """State shared by the masters that submit and read results on one socket
    (gloomd, gearmand); beanstalkd's needs a second one and keeps its own."""

    __slots__ = ("_buf", "acked", "bodies", "channels", "errors", "master", "out")

    def __init__(self, master: int, bodies: BodyMaker) -> None:
        self.master = master
        self.bodies = bodies
        self.channels = 1
        self.out = [bytearray()]
        self.acked = 0
        self.errors: list[str] = []
        self._buf = bytearray()

    def greet(self) -> None:
        return None
