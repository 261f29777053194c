"""HTTP requests and responses as plain values, so routing needs no sockets.

The I/O shell (`service`) turns h11 events into an `HttpRequest`, asks the
routes for an `HttpResponse` and hands that back to h11; everything in
between is a function of values, tested without a connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from gloomwire import codec

__all__ = [
    "Deferred",
    "HttpRequest",
    "HttpResponse",
    "Offload",
    "error_response",
    "json_response",
    "text_response",
]

JSON_TYPE: Final = b"application/json"
TEXT_TYPE: Final = b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    #: The path without the query string, still percent-encoded.
    path: str
    query: str
    #: Header names lower-cased (h11 does so), values as sent.
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """The last value of a header, or None (names are lower-case)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())
    #: Close the connection after this response (the request left the
    #: stream in an unknown state, or the peer is refused).
    close: bool = False


@dataclass(frozen=True, slots=True)
class Offload:
    """A response that costs enough CPU to be made off the event loop.

    The routes return this instead of doing the work, and the I/O shell runs
    `work` in a worker thread (h11's lesson: decide here, act there).  `work`
    must touch no daemon state: everything it needs was read before.
    """

    work: Callable[[], HttpResponse]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A response that waits on the loop for something the routes cannot wait
    for: an admin action's answer held until the journal's commit stores it
    (`gloomd.holds`).  The I/O shell awaits `wait`.
    """

    wait: Callable[[], Awaitable[HttpResponse]]


def json_response(status: int, value: Any, *, close: bool = False) -> HttpResponse:
    # jsoncodec rather than json: integers beyond 64 bits stay exact, as on the wire.
    return HttpResponse(status, codec.dumps(value), JSON_TYPE, close=close)


def error_response(
    status: int,
    error: str,
    reason: Any,
    *,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    close: bool = False,
) -> HttpResponse:
    """An error in the shape of the protocol's error frames: {"error":E,"reason":R}."""
    body = codec.dumps({"error": error, "reason": reason})
    return HttpResponse(status, body, JSON_TYPE, headers=headers, close=close)


def text_response(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, text.encode("utf-8"), TEXT_TYPE)
