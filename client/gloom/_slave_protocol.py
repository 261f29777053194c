"""The slave side of the protocol as a state machine: bytes in, events out.

A slave connection carries at most one job at a time.  `join`, `respond`,
`fail`, `ping` and `leave` each get one reply, in order; `progress` gets none;
the daemon pushes a job frame whenever the connection is joined and idle (the
``ok`` for a respond is always written before the next job frame).

A job frame carries ``attempt`` only on a redelivery (protocol.md, "Job frame
extras"): whoever reads one takes a missing ``attempt`` as 1 (`attempt_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gloomwire import vocabulary
from gloomwire.vocabulary import CATEGORIES

from ._protocol import Request, RequestQueue, decode_frames, encode, new_decoder
from .errors import GloomError, ProtocolError, ServerError, error_from_frame

__all__ = [
    "CATEGORIES",
    "PARKING_TYPE",
    "Answered",
    "JobOffered",
    "Notice",
    "SlaveProtocol",
    "attempt_of",
]

#: The type a slave joins to stop being offered jobs (`SlaveProtocol.leave`).
#: Nobody submits jobs of this type, and a re-join makes the daemon put back
#: a job it had just handed over without counting it as lost.
PARKING_TYPE: Any = ["gloom.worker", "leaving"]


def attempt_of(frame: dict[str, Any]) -> int:
    """The delivery count of a job frame: its ``attempt``, 1 when absent
    (gloomd sends it only on a redelivery; Gloom never did)."""
    attempt = frame.get("attempt", 1)
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1


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
        return self._request("join", vocabulary.join(type))

    def leave(self) -> tuple[Request, bytes]:
        """Join `PARKING_TYPE`: no more jobs, and one on its way is put back.

        Every job frame that arrives before this request's reply is such a
        job: the daemon has taken it back, so it must not be run.
        """
        return self._request("leave", vocabulary.join(PARKING_TYPE))

    def ping(self) -> tuple[Request, bytes]:
        """A sign-of-life request: gloomd answers ``{"ok":true}``; older daemons
        and Gloom answer with an error frame, which resolves it just as well."""
        return self._request("ping", vocabulary.ping())

    def respond(self, body: Any) -> tuple[Request, bytes]:
        return self._request("respond", vocabulary.respond(body))

    def fail(self, category: str, reason: Any = None) -> tuple[Request, bytes]:
        if category not in CATEGORIES:
            # Checked here because the daemon's answer (invalid_type) would
            # come back on a connection that still holds the job.
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
        return self._request("fail", vocabulary.fail(category, reason))

    def progress(self, value: Any) -> bytes:
        return encode(vocabulary.progress_report(value))

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
