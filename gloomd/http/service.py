"""The HTTP port: h11 over trio, one task per connection (h11's own model).

Why h11: it is the sans-IO HTTP/1.1 parser trio-websocket already brings in
(so nothing new to install or audit), it enforces the protocol's framing
rules itself (a malformed request is a `RemoteProtocolError` with the status
to answer), it caps the size of an incomplete request head for us (431), and
it leaves every wait to the caller, so each one sits under a trio timeout
scope.  An ASGI stack would bring a server, an app protocol and a router for
nine fixed routes that a dict serves.

Shape (`examples/trio-server.py` of h11, on `trio.serve_tcp`):

* `run` listens, reports its fragment of the daemon's ready line
  (``http=HOST:PORT``; the bound port is then in `port`) through
  `task_status`, and serves until cancelled; every connection is a task in
  serve_tcp's nursery.  It is a `gloomd.service.Service`: `gloomd` runs it
  beside the Gloom ports unless told `--no-http`, and at shutdown calls
  `shutdown`, which starts "draining".
* A connection over `max_connections` is answered 503 and closed at once
  (under TLS it is just closed, as the Gloom ports do: no handshake for a
  connection that will not be served).
* Each request, line to last body byte, must arrive within
  `request_timeout` of the moment the connection became ready for it, idle
  keep-alive time included: a slowloris peer is cut then (408 if it had
  started a request, silently if it had sent nothing).  Writing a response
  has the same limit, so a peer that does not read cannot hold a task.
* Keep-alive through `start_next_cycle`; a response that must close (400,
  413, 431, ...) says `Connection: close`, then the write side is shut and
  what the peer still sends is read briefly and dropped, so the kernel does
  not answer it with a reset that would destroy the response in flight.

Cost when idle: a listening socket and one parked accept task.  Nothing runs
per job; a scrape reads the broker once (see `metrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Final

import h11
import trio

from gloomwire.logformat import event

from ..server import GloomServer
from ..service import Service
from .buildinfo import version
from .messages import Deferred, HttpRequest, HttpResponse, Offload, error_response
from .routes import HttpApp, split_target
from .settings import HttpSettings

__all__ = ["HttpService"]

log = logging.getLogger("gloomd.http")

_RECEIVE_SIZE: Final = 65536
#: After a response that closes: how long, and how much, of what the peer
#: still sends is read and dropped before the socket is closed.
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class _Reject:
    """A request that gets an error and the connection closed."""

    response: HttpResponse


class HttpService(Service):
    """The HTTP port of a running `GloomServer`.

    Start it beside the server: ``await nursery.start(service.run)``, then
    read `port`.  `connection_counts` adds ports the service cannot see
    (e.g. "ws") to gloomd_connections; master, slave and http are counted
    here.
    """

    name = "http"

    def __init__(
        self,
        server: GloomServer,
        settings: HttpSettings | None = None,
        *,
        connection_counts: Mapping[str, Callable[[], int]] | None = None,
    ) -> None:
        self.settings = settings or HttpSettings()
        self.server = server
        self.port = 0
        #: Set by `start_draining`; the broker's halt (shutdown) also counts.
        self.draining = False
        self.open_connections = 0
        # One render thread: they hold the GIL anyway, and this bounds the
        # memory of concurrent large renders.
        self._offload_limiter = trio.CapacityLimiter(1)
        self._extra_counts = dict(connection_counts or {})
        self._server_header = f"gloomd/{version()}".encode("ascii", "replace")
        self.app = HttpApp(
            server, self.settings, connections=self._connection_counts, draining=self.is_draining
        )

    # ------------------------------------------------------------ state

    def start_draining(self) -> None:
        """From now on /healthz answers 503 draining (requests are still served)."""
        self.draining = True

    async def shutdown(self) -> None:
        """The daemon is stopping: say so on /healthz (`start_draining`)."""
        self.start_draining()

    def is_draining(self) -> bool:
        broker = self.server.broker
        return self.draining or (broker is not None and broker.halted)

    def _connection_counts(self) -> dict[str, int]:
        broker = self.server.broker
        counts = {
            "master": len(broker.masters) if broker is not None else 0,
            "slave": len(broker.slaves) if broker is not None else 0,
            "http": self.open_connections,
        }
        for port, count in self._extra_counts.items():
            counts[port] = count()
        return counts

    # ------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: trio.TaskStatus[str | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        s = self.settings
        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await nursery.start(
                partial(trio.serve_tcp, self._handle, s.port, host=s.host, backlog=4096)
            )
            self.port = listeners[0].socket.getsockname()[1]
            event(
                log, "http_listening", host=s.host, port=self.port,
                tls="on" if s.ssl_context is not None else "off",
                auth="on" if s.token is not None else "off",
            )  # fmt: skip
            task_status.started(f"http={s.host}:{self.port}")

    # ------------------------------------------------------------ one connection

    async def _handle(self, tcp: trio.SocketStream) -> None:
        s = self.settings
        self.open_connections += 1
        stream: trio.abc.Stream = tcp
        try:
            if self.open_connections > s.max_connections:
                event(log, "refused", logging.WARNING, port="http", reason="too_many_connections")
                if s.ssl_context is None:
                    await self._close_with(
                        tcp,
                        h11.Connection(h11.SERVER),
                        error_response(503, "too_many_connections", s.max_connections, close=True),
                    )
                return
            if s.ssl_context is not None:
                tls = trio.SSLStream(tcp, s.ssl_context, server_side=True, https_compatible=True)
                stream = tls
                with trio.move_on_after(s.request_timeout) as handshake:
                    await tls.do_handshake()
                if handshake.cancelled_caught:
                    event(log, "tls_error", logging.WARNING, port="http", error="handshake_timeout")
                    return
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away (or failed its TLS handshake): nothing to answer
        except Exception as exc:
            # A bug here must cost one connection, never the daemon.
            event(log, "http_error", logging.ERROR, error=type(exc).__name__, exc_info=exc)
        finally:
            self.open_connections -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.settings.max_header_bytes)
        while True:
            got = await self._read_request(stream, conn)
            if got is None:
                return
            if isinstance(got, _Reject):
                await self._close_with(stream, conn, got.response)
                return
            try:
                result = self.app.handle(got)
                if isinstance(result, Offload):
                    result = await trio.to_thread.run_sync(
                        result.work, limiter=self._offload_limiter
                    )
                elif isinstance(result, Deferred):
                    result = await result.wait()
                response = result
            except Exception as exc:
                event(
                    log, "http_error", logging.ERROR, path=got.path, error=type(exc).__name__,
                    exc_info=exc,
                )  # fmt: skip
                response = error_response(500, "internal_error", got.path, close=True)
            if not await self._send(stream, conn, response, head=got.method == "HEAD"):
                return
            if response.close or conn.our_state is h11.MUST_CLOSE:
                await self._linger(stream)
                return
            conn.start_next_cycle()

    async def _read_request(
        self, stream: trio.abc.Stream, conn: h11.Connection
    ) -> HttpRequest | _Reject | None:
        """The next whole request; a `_Reject` to answer and close; None to just close."""
        s = self.settings
        request: h11.Request | None = None
        body = bytearray()
        started = False
        with trio.move_on_after(s.request_timeout):
            while True:
                try:
                    h11_event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    error = "headers_too_large" if status == 431 else "bad_request"
                    event(log, "http_bad_request", logging.WARNING, status=status, error=str(exc))
                    return _Reject(error_response(status, error, str(exc), close=True))
                if h11_event is h11.NEED_DATA:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    started = started or bool(data) or request is not None
                    conn.receive_data(bytes(data))  # b"": EOF, which h11 judges
                    continue
                if isinstance(h11_event, h11.Request):
                    request = h11_event
                    if _head_size(h11_event) > s.max_header_bytes:
                        return _Reject(_head_too_large(s.max_header_bytes))
                    length = _content_length(h11_event)
                    if length is not None and length > s.max_body:
                        return _Reject(_too_large(s.max_body))
                    if conn.they_are_waiting_for_100_continue:
                        await stream.send_all(
                            conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                        )
                    continue
                if isinstance(h11_event, h11.Data):
                    body += h11_event.data
                    if len(body) > s.max_body:
                        return _Reject(_too_large(s.max_body))
                    continue
                if isinstance(h11_event, h11.EndOfMessage):
                    assert request is not None
                    path, query = split_target(request.target.decode("latin-1"))
                    return HttpRequest(
                        method=request.method.decode("ascii", "replace"),
                        path=path,
                        query=query,
                        headers=tuple(request.headers),
                        body=bytes(body),
                    )
                # ConnectionClosed (EOF between requests), or PAUSED, which
                # cannot come before EndOfMessage: either way, done.
                return None
        if started:
            event(log, "http_timeout", logging.WARNING, seconds=s.request_timeout)
            return _Reject(error_response(408, "request_timeout", s.request_timeout, close=True))
        return None  # an idle keep-alive connection: close without a word

    # ------------------------------------------------------------ writing

    def _head(self, response: HttpResponse) -> h11.Response:
        headers = [
            (b"content-type", response.content_type),
            (b"content-length", str(len(response.body)).encode("ascii")),
            (b"server", self._server_header),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            *response.headers,
        ]
        if response.close:
            headers.append((b"connection", b"close"))
        return h11.Response(status_code=response.status, headers=headers)

    async def _send(
        self, stream: trio.abc.Stream, conn: h11.Connection, response: HttpResponse, *, head: bool
    ) -> bool:
        """Write one response within the timeout; False if it could not be."""
        data = conn.send(self._head(response))
        if not head and response.body:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
        sent = False
        with trio.move_on_after(self.settings.request_timeout):
            await stream.send_all(data)
            sent = True
        return sent

    async def _close_with(
        self, stream: trio.abc.Stream, conn: h11.Connection, response: HttpResponse
    ) -> None:
        # After a broken request h11 may be past the point of answering
        # (mid-response); then there is nothing left to say.
        answerable = conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)
        if answerable and await self._send(stream, conn, response, head=False):
            await self._linger(stream)

    async def _linger(self, stream: trio.abc.Stream) -> None:
        """Shut our side and drop what the peer still sends, briefly (see module doc)."""
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        received = 0
        with trio.move_on_after(_LINGER_SECONDS):
            while received < _LINGER_BYTES:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    break
                received += len(data)


def _head_size(request: h11.Request) -> int:
    """The request line plus headers as sent, give or take the whitespace h11 trims.

    h11 refuses a head over `max_incomplete_event_size` only while it is
    still incomplete; one that arrived whole in a single read is parsed, so
    the limit is checked again on the parsed request.
    """
    size = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in request.headers:
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


def _head_too_large(limit: int) -> HttpResponse:
    return error_response(431, "headers_too_large", f"request head over {limit} bytes", close=True)


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits
    return None


def _too_large(limit: int) -> HttpResponse:
    return error_response(413, "size_error", f"body over {limit} bytes", close=True)
