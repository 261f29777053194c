"""gloomd (Gloom protocol): 32-bit big-endian length, then a JSON object.

Master: ``submit`` → ``{"ok":true,"id":ID}`` then, later, ``{"id":ID,"body":R}``.
Slave: ``join`` → ``{"ok":true}``; ``{"action":"job",...}`` → ``respond`` → ``{"ok":true}``.
"""

from __future__ import annotations

import struct

import orjson

from .wire import Bytes, OneSocketMaster, Result, note_error

__all__ = ["JOB_TYPE", "GloomMaster", "GloomWorker", "split_frames"]

JOB_TYPE = "echo"

_LEN = struct.Struct(">I")
_unpack_from = _LEN.unpack_from
_pack = _LEN.pack
_loads = orjson.loads
_dumps = orjson.dumps


def split_frames(buf: bytearray) -> list[bytes]:
    """Remove every complete frame from ``buf`` and return their payloads."""
    frames: list[bytes] = []
    end = len(buf)
    pos = 0
    while end - pos >= 4:
        (length,) = _unpack_from(buf, pos)
        stop = pos + 4 + length
        if stop > end:
            break
        frames.append(bytes(buf[pos + 4 : stop]))
        pos = stop
    if pos:
        del buf[:pos]
    return frames


def frame(payload: bytes) -> bytes:
    return _pack(len(payload)) + payload


class GloomMaster(OneSocketMaster):
    """One master connection.  Job ids are integers; the body is a JSON string."""

    __slots__ = ()

    def submit(self, first: int, count: int) -> None:
        make = self.bodies.make
        m = self.master
        out = self.out[0]
        for jid in range(first, first + count):
            # The body is plain ASCII (see bodies.py), so formatting the frame
            # by hand is valid JSON and several times cheaper than a dict dump.
            payload = b'{"action":"submit","id":%d,"type":"echo","body":"%s"}' % (
                jid,
                make(m, jid),
            )
            out += _pack(len(payload))
            out += payload

    def feed(self, channel: int, data: Bytes) -> list[Result]:
        buf = self._buf
        buf += data
        results: list[Result] = []
        make = self.bodies.make
        m = self.master
        for payload in split_frames(buf):
            try:
                msg = _loads(payload)
            except orjson.JSONDecodeError:
                note_error(self.errors, b"undecodable frame: " + payload[:80])
                continue
            if not isinstance(msg, dict):
                note_error(self.errors, msg)
            elif "ok" in msg:
                self.acked += 1
            elif "body" in msg and "id" in msg:
                jid = msg["id"]
                body = msg["body"]
                ok = isinstance(body, str) and body.encode() == make(m, jid)
                results.append((jid, ok))
            elif "progress" not in msg:
                note_error(self.errors, msg)
        return results


class GloomWorker:
    """One slave connection echoing each job's body back as its result."""

    __slots__ = ("_buf", "errors", "jobs", "ready")

    def __init__(self) -> None:
        self.ready = False
        self.jobs = 0
        self.errors: list[str] = []
        self._buf = bytearray()

    def greet(self) -> bytes:
        return frame(b'{"action":"join","type":"echo"}')

    def feed(self, data: Bytes) -> bytes:
        buf = self._buf
        buf += data
        reply = bytearray()
        for payload in split_frames(buf):
            msg = _loads(payload)
            if not isinstance(msg, dict):
                note_error(self.errors, msg)
            elif msg.get("action") == "job":
                answer = _dumps({"action": "respond", "body": msg.get("body")})
                reply += _pack(len(answer))
                reply += answer
                self.jobs += 1
            elif msg.get("ok") is True:
                self.ready = True
            else:
                note_error(self.errors, msg)
        return bytes(reply)
