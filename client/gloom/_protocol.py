"""Pieces of the wire protocol shared by the master and slave sides (no I/O).

Both ports follow one rule that the client leans on: the daemon answers a
connection's requests (submit, cancel, stats, result, join, respond, fail) in
the order they were sent, one reply each, while other frames (results,
progress, job offers) may arrive in between.  So each side keeps a FIFO of
`Request`s and gives the next reply-shaped frame to the oldest one.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gloomwire import codec
from gloomwire.framing import DEFAULT_MAX_FRAME, FrameDecoder, FrameTooLarge, encode_frame

from .errors import GloomError, ProtocolError

__all__ = [
    "JobState",
    "Request",
    "RequestQueue",
    "decode_frames",
    "encode",
    "id_key",
    "new_decoder",
]


class JobState(enum.StrEnum):
    """Where a submitted job is, as far as its master can tell.

    The protocol never announces that a slave picked a job up, so ``running``
    is only known once the first progress frame arrives.  A `StrEnum`, so
    str(), format() and JSON give the bare value (``"done"``).
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def id_key(job_id: Any) -> tuple[type, Any]:
    """Dictionary key for a job id that compares ids as the daemon does.

    Python says ``1 == 1.0 == True``; the protocol says ``1``, ``"1"`` and
    ``true`` are different ids.  Pairing the value with its exact type keeps
    them apart.
    """
    return (type(job_id), job_id)


@dataclass(eq=False)
class Request:
    """One request awaiting its reply.

    The protocol classes fill in `value` or `error` and set `answered`; the
    I/O shells hang whatever they use to wake a waiter on `waker`.
    """

    kind: str
    job_id: Any = None
    token: Any = None
    waker: Any = None
    answered: bool = False
    settled: bool = False  # submits only: the job's outcome has arrived
    value: Any = None
    error: GloomError | None = None

    def resolve(self, value: Any = None, error: GloomError | None = None) -> None:
        self.answered = True
        self.value = value
        self.error = error


@dataclass
class RequestQueue:
    """The FIFO of requests sent and not yet answered on one connection."""

    pending: deque[Request] = field(default_factory=deque)

    def push(self, request: Request) -> None:
        self.pending.append(request)

    def head(self) -> Request | None:
        return self.pending[0] if self.pending else None

    def pop(self, frame: dict[str, Any]) -> Request:
        if not self.pending:
            raise ProtocolError(f"reply with no request outstanding: {_short(frame)}")
        return self.pending.popleft()

    def fail_all(self, error: GloomError) -> list[Request]:
        """Resolve every outstanding request with `error` (the connection is gone)."""
        failed = list(self.pending)
        self.pending.clear()
        for request in failed:
            request.resolve(error=error)
        return failed


def new_decoder() -> FrameDecoder:
    return FrameDecoder(DEFAULT_MAX_FRAME)


def decode_frames(decoder: FrameDecoder, data: bytes | bytearray) -> list[dict[str, Any]]:
    """Frames in `data` as dicts; anything else means we lost the thread."""
    try:
        payloads = decoder.feed(data)
    except FrameTooLarge as exc:
        raise ProtocolError(str(exc)) from None
    frames = []
    for payload in payloads:
        try:
            frame = codec.loads(payload)
        except codec.DecodeError as exc:
            raise ProtocolError(f"undecodable frame from gloomd: {exc}") from None
        if not isinstance(frame, dict):
            raise ProtocolError(f"frame is not a JSON object: {_short(frame)}")
        frames.append(frame)
    return frames


def encode(frame: dict[str, Any]) -> bytes:
    return encode_frame(frame)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
