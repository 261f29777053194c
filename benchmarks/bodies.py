"""Job bodies that name their own job, so every echoed result can be checked.

A body is ``b"<master>:<job id>:"`` padded with ``x`` to the requested size.
Carrying the ids inside the body lets a gearman or beanstalkd result (which
carry only a server handle) be matched to its job without a per-job lookup
table, and lets a beanstalkd worker find the reply tube of the job's master.
Every character is plain ASCII, so a body can be pasted into a JSON string
without escaping.
"""

from __future__ import annotations

__all__ = ["BodyMaker", "parse_ids"]


class BodyMaker:
    """Builds the body of job ``jid`` of master ``master``, ``size`` bytes long."""

    __slots__ = ("_pad", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._pad = b"x" * size

    def make(self, master: int, jid: int) -> bytes:
        head = b"%d:%d:" % (master, jid)
        # A body smaller than its header keeps the header: the ids matter more
        # than the exact size for such tiny bodies.
        return head + self._pad[len(head) :]


def parse_ids(body: bytes | bytearray | str) -> tuple[int, int]:
    """Return (master, job id) from a body made by `BodyMaker`; ValueError if it is not one."""
    if isinstance(body, str):
        body = body.encode("ascii", "replace")
    master, jid, _ = body.split(b":", 2)
    return int(master), int(jid)
