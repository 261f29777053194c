"""The slave side of the protocol as a state machine: bytes in, events out.

A slave connection carries at most one job at a time.  `join`, `respond` and
`fail` each get one reply, in order; `progress` gets none; the daemon pushes a
job frame whenever the connection is joined and idle (the ``ok`` for a
respond is always written before the next job frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import GloomError, ProtocolError, ServerError, error_from_frame
from ._protocol import Request, RequestQueue, decode_frames, encode, new_decoder

__all__ = ["CATEGORIES", "Answered", "JobOffered", "Notice", "SlaveProtocol"]

#: Failure categories a slave may report with ``fail``.
CATEGORIES = ("ERROR", "TIMEOUT", "CRASH", "HALTED")


@dataclass(frozen=True)
class JobOffered:
    """The daemon handed this connection a job (the whole frame, extras included)."""

    frame: dict[str, Any]


@dataclass(frozen=True)
class Answered:
    request: Request


@dataclass(frozen=True)
class Notice:
    error: ServerError


Event = JobOffered | Answered | Notice


class SlaveProtocol:
    def __init__(self) -> None:
        self._decoder = new_decoder()
        self._requests = RequestQueue()

    def join(self, type: Any) -> tuple[Request, bytes]:
        return self._request("join", {"action": "join", "type": type})

    def respond(self, body: Any) -> tuple[Request, bytes]:
        return self._request("respond", {"action": "respond", "body": body})

    def fail(self, category: str, reason: Any = None) -> tuple[Request, bytes]:
        if category not in CATEGORIES:
            # Checked here because the daemon's answer (invalid_type) would
            # come back on a connection that still holds the job.
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
        return self._request("fail", {"action": "fail", "error": category, "reason": reason})

    def progress(self, value: Any) -> bytes:
        return encode({"action": "progress", "body": value})

    def _request(self, kind: str, frame: dict[str, Any]) -> tuple[Request, bytes]:
        data = encode(frame)
        request = Request(kind)
        self._requests.push(request)
        return request, data

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        events: list[Event] = []
        for frame in decode_frames(self._decoder, data):
            if frame.get("action") == "job":
                for key in ("id", "type", "body"):
                    if key not in frame:
                        raise ProtocolError(f"job frame without {key!r}: {frame!r:.200}")
                events.append(JobOffered(frame))
            elif "ok" in frame:
                request = self._requests.pop(frame)
                request.resolve(True)
                events.append(Answered(request))
            elif "error" in frame:
                head = self._requests.head()
                if head is None:
                    events.append(Notice(error_from_frame(frame)))
                else:
                    self._requests.pop(frame)
                    head.resolve(error=error_from_frame(frame))
                    events.append(Answered(head))
            else:
                raise ProtocolError(f"unexpected frame from gloomd: {frame!r:.200}")
        return events

    def connection_lost(self, error: GloomError) -> list[Request]:
        return self._requests.fail_all(error)
