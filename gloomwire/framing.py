"""Sans-IO framing: a 32-bit big-endian length, then that many bytes of JSON.

`FrameDecoder` is fed whatever bytes a socket delivered and hands back every
complete payload in them, in one call, so the I/O layer can process a whole
receive synchronously.  It never touches a socket, so it is tested by feeding
it bytes (one at a time, or thousands of frames at once), as h11 is.

The decoder only frames; turning a payload into JSON and into a message is the
job of `gloomd.messages`.  That split matters for error handling: a payload
that is not JSON leaves the stream in sync (the length was honest), while a
length over the cap means the stream can no longer be trusted at all.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from . import codec

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "FrameDecoder",
    "FrameTooLarge",
    "encode_frame",
    "encode_into",
    "encode_payload",
]

#: gloomd's default cap on one frame's payload (Gloom's was 256 MiB).
DEFAULT_MAX_FRAME = 16 * 1024 * 1024

#: Size of the length prefix.
HEADER = 4
#: A receive starting with a frame at least this long is copied frame by
#: frame, not whole and then frame by frame (`FrameDecoder.feed`).
LARGE_FRAME = 4096

_LENGTH = struct.Struct(">I")
_unpack_from = _LENGTH.unpack_from
_pack = _LENGTH.pack
_orjson_dumps = orjson.dumps
_raw_json = codec.raw_json
#: A body kept as JSON text at least this long is joined into the output in
#: place rather than copied by orjson first (`encode_into`).
SPLICE_MIN = 4096
#: Where `encode_into` puts such a body: one NUL byte, which orjson never
#: writes otherwise (a NUL in a string is written `\u0000`).
_HOLE = orjson.Fragment(b"\x00")


class FrameTooLarge(Exception):
    """A length prefix announced more than the cap; the stream is unusable."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


class FrameDecoder:
    """Incremental frame parser.

    `feed(data)` returns the payloads completed by `data` (possibly none).  A
    partial frame is kept until the rest arrives.  `pending` tells whether a
    frame has started but not finished, which the server uses to tell a clean
    close from a close in the middle of a frame, and to time out slow senders.
    """

    __slots__ = ("_chunks", "_need", "max_frame", "pending")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        # A partial frame is kept as a list of chunks and joined once it is
        # complete: re-joining on every receive would make a large frame that
        # arrives in many small reads cost quadratic time.
        self._chunks: list[bytes] = []
        #: Bytes held of a frame not yet complete (an attribute, not a
        #: property: the server reads it after every receive).
        self.pending = 0
        self._need = 0  # bytes the partial frame needs in all (0: header not yet known)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The payloads `data` completes.  A memoryview (of a buffer the caller
        reuses) is copied: whole, or, when it starts with a large frame, frame
        by frame, which saves copying a large payload twice (issue 20)."""
        if type(data) is memoryview:
            if self._need:
                return self._finish_view(data)
            if self._chunks or len(data) < HEADER or _unpack_from(data)[0] < LARGE_FRAME:
                data = data.tobytes()
            else:
                return self._feed_view(data)
        elif type(data) is not bytes:
            data = bytes(data)  # trio streams may hand over a bytearray
        if self._chunks:
            self._chunks.append(data)
            self.pending += len(data)
            if self.pending < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
            self.pending = self._need = 0
        frames: list[bytes] = []
        end = len(data)
        pos = 0
        limit = self.max_frame
        while end - pos >= HEADER:
            (length,) = _unpack_from(data, pos)
            if length > limit:
                # The frames before the bad header were sent in sync: hand them
                # over with the error so the caller can still process them.
                raise FrameTooLargeWithFrames(length, limit, frames)
            stop = pos + HEADER + length
            if stop > end:
                self._need = HEADER + length
                break
            frames.append(data[pos + HEADER : stop])
            pos = stop
        if pos < end:
            rest = data[pos:] if pos else data
            self._chunks.append(rest)
            self.pending = len(rest)
        return frames

    def _feed_view(self, view: memoryview) -> list[bytes]:
        """`feed` for a view that starts a frame: each payload copied once."""
        frames: list[bytes] = []
        end = len(view)
        pos = 0
        limit = self.max_frame
        while end - pos >= HEADER:
            (length,) = _unpack_from(view, pos)
            if length > limit:
                raise FrameTooLargeWithFrames(length, limit, frames)
            stop = pos + HEADER + length
            if stop > end:
                self._need = HEADER + length
                break
            frames.append(view[pos + HEADER : stop].tobytes())
            pos = stop
        if pos < end:
            self._chunks.append(view[pos:].tobytes())
            self.pending = end - pos
        return frames

    def _finish_view(self, view: memoryview) -> list[bytes]:
        """`feed` for a view when a frame of known length is pending: the view's
        bytes that complete it are joined with the held ones, and the rest is fed
        as a view of its own.  Copying the whole view and joining it to the held
        part, as the bytes path does, copied every byte after the pending frame
        twice more: with 64 KiB frames nearly every receive ends inside one."""
        need = self._need - self.pending
        if need > len(view):
            self._chunks.append(view.tobytes())
            self.pending += len(view)
            return []
        chunks: list[bytes | memoryview] = [memoryview(self._chunks[0])[HEADER:]]
        chunks += self._chunks[1:]
        chunks.append(view[:need])
        self._chunks = []
        self.pending = self._need = 0
        first = b"".join(chunks)
        if need == len(view):
            return [first]
        try:
            frames = self.feed(view[need:])
        except FrameTooLargeWithFrames as exc:
            exc.frames.insert(0, first)
            raise
        frames.insert(0, first)
        return frames

    def clear(self) -> None:
        """Forget a partial frame (the connection is gone): up to a whole
        frame's bytes are freed now rather than with the decoder."""
        self._chunks = []
        self.pending = self._need = 0


class FrameTooLargeWithFrames(FrameTooLarge):
    """`FrameTooLarge`, carrying the well-formed frames that preceded it.

    A client may pipeline good frames and then a bad one in the same packet;
    the good ones were sent in sync and deserve to be processed.
    """

    def __init__(self, length: int, limit: int, frames: list[bytes]) -> None:
        super().__init__(length, limit)
        self.frames = frames


def encode_payload(payload: bytes) -> bytes:
    """Prefix an already-encoded JSON payload with its length."""
    return _pack(len(payload)) + payload


class _LargeBody(Exception):
    """Raised by `_raw_json_small` at a `bytes` value worth splicing."""


def _raw_json_small(value: Any) -> Any:
    """`codec.raw_json`, stopping orjson at a `bytes` value of `SPLICE_MIN` or more.

    orjson calls its `default` only for a type it cannot write, and only
    bodies kept as JSON text are `bytes`: a frame without one (every frame
    of a 100 B job) pays nothing for the splice (issue 20).
    """
    if type(value) is bytes and len(value) >= SPLICE_MIN:
        raise _LargeBody
    return _raw_json(value)


def encode_into(parts: list[bytes], obj: Any) -> bool:
    """Append one message's length prefix and payload to `parts`, to be joined
    with others: one copy of the payload fewer than `encode_frame` + join.

    A large body kept as its JSON text (`gloomd.fastpath`) is appended as it
    is, between the frame's text before and after it, so that orjson does
    not copy it into its output before the join copies it again (issue 20).
    Returns whether it did: the parts are then worth writing unjoined
    (`PlainConnection.write_parts`).
    """
    try:
        payload = _orjson_dumps(obj, default=_raw_json_small)
    except orjson.JSONEncodeError as exc:
        if type(exc.__cause__) is _LargeBody and _splice(parts, obj):
            return True
        payload = codec.dumps(obj)
    parts += (_pack(len(payload)), payload)
    return False


def _splice(parts: list[bytes], obj: Any) -> bool:
    """`encode_into` for a frame whose `body` is large JSON text: the frame
    written with a hole for the body, the body appended as it is."""
    body = obj.get("body") if type(obj) is dict else None
    if type(body) is not bytes or len(body) < SPLICE_MIN:
        return False  # large JSON text elsewhere (not a frame the hot path writes)
    shell = dict(obj)
    shell["body"] = _HOLE
    try:
        text = _orjson_dumps(shell, default=_raw_json)
    except orjson.JSONEncodeError:
        return False  # an integer past 64 bits elsewhere in the frame: the exact writer
    # NUL is escaped inside a JSON string, so the hole is the one NUL.
    at = text.find(0)
    parts += (_pack(len(text) - 1 + len(body)), text[:at], body, text[at + 1 :])
    return True


def encode_frame(obj: Any) -> bytes:
    """Encode one message (a dict) as a complete frame."""
    try:
        payload = _orjson_dumps(obj, default=_raw_json_small)  # `codec.dumps`, one call less
    except orjson.JSONEncodeError as exc:
        parts: list[bytes] = []
        if type(exc.__cause__) is _LargeBody and _splice(parts, obj):
            return b"".join(parts)  # orjson's copy of the body saved, as in `encode_into`
        payload = codec.dumps(obj)
    return _pack(len(payload)) + payload
