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


def encode_into(parts: list[bytes], obj: Any) -> None:
    """Append one message's length prefix and payload to `parts`, to be joined
    with others: one copy of the payload fewer than `encode_frame` + join."""
    try:
        payload = _orjson_dumps(obj, default=_raw_json)
    except orjson.JSONEncodeError:
        payload = codec.dumps(obj)
    parts += (_pack(len(payload)), payload)


def encode_frame(obj: Any) -> bytes:
    """Encode one message (a dict) as a complete frame."""
    try:
        payload = _orjson_dumps(obj, default=_raw_json)  # `codec.dumps`, one call less
    except orjson.JSONEncodeError:
        payload = codec.dumps(obj)
    return _pack(len(payload)) + payload
