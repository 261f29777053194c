"""Reaching gloomd: where it is, how to connect and authenticate, how to retry.

Every connection the client opens (a trio master or slave, a blocking
`Master`/`Slave`, each slot of the worker runner, its start-up probe and its
scaling connection) is described by one `Endpoint` and made by one of two
twins that share the sans-IO `AuthHandshake`:

* `connect` (trio): TCP, then TLS when asked, then the auth exchange, all
  within the endpoint's `connect_timeout`;
* `connect_blocking`: the same on a blocking socket, for `gloom.Master` and
  `gloom.Slave`.

Reconnecting waits as one `Backoff` says (1 s doubling to 30 s by default):
the trio slave, the blocking slave and the runner's slots all use it.
"""

from __future__ import annotations

import math
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

import trio

from ._security import AuthHandshake, client_ssl_context, resolve_token
from .errors import TransportError

__all__ = [
    "TLS_HINT",
    "Backoff",
    "Endpoint",
    "Security",
    "StartedStream",
    "connect",
    "connect_blocking",
    "reconnect",
    "socket_stream",
]

_READ_SIZE = 256 * 1024

#: Added to "closed the connection" when a plaintext client got no byte back:
#: what a TLS-only port does to plaintext (gloomd closes it without a frame;
#: for everything else it says why first).  One wording for every client.
TLS_HINT = " (is it TLS-only? try --tls)"

PathLike = str | os.PathLike[str]


class Security(TypedDict, total=False):
    """The security options every client takes, as keyword arguments.

    `token`, else `token_file`'s first line, else $GLOOMD_TOKEN is presented
    in an auth frame before anything else (none: no auth frame).
    `ssl_context`, or `tls=True` with an optional CA file `tls_ca` (which
    implies `tls`), wraps the connection in TLS with the daemon's certificate
    checked against the host dialled.  Both are off unless asked for.
    """

    token: str | None
    token_file: PathLike | None
    ssl_context: ssl.SSLContext | None
    tls: bool
    tls_ca: PathLike | None


@dataclass(frozen=True)
class Endpoint:
    """A daemon's port and the credentials to present there.

    Resolved once (`configure`), so a bad token file fails before anything
    connects, and every reconnect presents exactly what the first connection
    did.
    """

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    token: str | None = field(default=None, repr=False)
    connect_timeout: float | None = 10.0

    @classmethod
    def configure(
        cls,
        host: str,
        port: int,
        connect_timeout: float | None = 10.0,
        **security: Unpack[Security],
    ) -> Endpoint:
        """The endpoint for the public security options (see `Security`)."""
        context = client_ssl_context(
            security.get("ssl_context"),
            tls=security.get("tls", False),
            tls_ca=security.get("tls_ca"),
        )
        token = resolve_token(security.get("token"), security.get("token_file"))
        return cls(host, port, context, token, connect_timeout)

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls_hint(self) -> str:
        """`TLS_HINT` for a plaintext endpoint, else nothing."""
        return TLS_HINT if self.ssl_context is None else ""


class Backoff:
    """Capped exponential back-off: `initial` seconds, doubling up to `maximum`.

    `next()` is the delay before the next attempt; `reset()` after a success,
    so the next outage starts from `initial` again.
    """

    def __init__(self, initial: float = 1.0, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    def __repr__(self) -> str:
        return f"Backoff(initial={self.initial}, maximum={self.maximum}, next={self._next})"


# ---------------------------------------------------------------- trio


async def connect(endpoint: Endpoint) -> trio.abc.Stream:
    """Open a stream to gloomd, in TLS and authenticated when asked.

    Everything (TCP, TLS handshake, auth exchange) shares the endpoint's
    `connect_timeout`.  A failure to connect or to complete TLS is a
    `TransportError`; a refused token is `Unauthorized`.  Bytes that followed
    the auth reply, if any, are returned first by the stream (see
    `StartedStream`).
    """
    where = endpoint.peer
    timeout = endpoint.connect_timeout
    stream: trio.abc.Stream | None = None
    phase = "connection"
    try:
        with trio.fail_after(math.inf if timeout is None else timeout):
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
            if endpoint.ssl_context is not None:
                phase = "TLS handshake"
                stream = trio.SSLStream(stream, endpoint.ssl_context, server_hostname=endpoint.host)
                await stream.do_handshake()
            leftover = b""
            if endpoint.token is not None:
                phase = "auth"
                leftover = await _authenticate(stream, endpoint.token, where, endpoint.tls_hint)
            return StartedStream(stream, leftover)
    except trio.TooSlowError:
        await _close_quietly(stream)
        raise TransportError(f"cannot reach gloomd at {where}: {phase} timed out") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await _close_quietly(stream)
        cause = exc.__cause__ or exc
        raise TransportError(f"{phase} with gloomd at {where} failed: {cause}") from None
    except OSError as exc:
        await _close_quietly(stream)
        reason = exc.strerror or str(exc)
        raise TransportError(f"cannot reach gloomd at {where}: {reason}") from None
    except BaseException:
        await _close_quietly(stream)
        raise


async def reconnect(endpoint: Endpoint, backoff: Backoff) -> trio.abc.Stream:
    """Connect again after the daemon was lost: wait, try, wait longer, forever.

    Only `TransportError` is retried: a refused token (`Unauthorized`) cannot
    get better by waiting, so it is raised at once.
    """
    backoff.reset()
    while True:
        await trio.sleep(backoff.next())
        try:
            return await connect(endpoint)
        except TransportError:
            continue


async def _authenticate(stream: trio.abc.Stream, token: str, where: str, hint: str = "") -> bytes:
    """Send the auth frame and wait for its reply; returns bytes read past it."""
    handshake = AuthHandshake(token)
    await stream.send_all(handshake.request)
    while True:
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            # gloomd always says why before closing; silence means something
            # else hung up (a TLS-only port, a proxy, not gloomd).
            raise TransportError(f"gloomd at {where} closed the connection during auth{hint}")
        if handshake.receive_data(data):
            return handshake.leftover


async def _close_quietly(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


class StartedStream(trio.abc.Stream):
    """A connected stream plus the bytes already read from it during auth.

    Wrapping rather than returning a pair keeps `connect`'s callers simple:
    they get a Stream, and the first `receive_some` returns the leftover.
    """

    def __init__(self, stream: trio.abc.Stream, leftover: bytes = b"") -> None:
        self.stream = stream
        self._leftover = leftover

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def socket_stream(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The TCP stream under `connect`'s wrappers (auth leftover, then TLS).

    Socket options belong to the TCP socket whatever is layered on top of it,
    so they are set there; None for a stream with no socket (a test's memory
    stream), which then simply goes without them.
    """
    while True:
        if isinstance(stream, trio.SocketStream):
            return stream
        if isinstance(stream, StartedStream):
            stream = stream.stream
        elif isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        else:
            return None


# ---------------------------------------------------------------- blocking


def connect_blocking(endpoint: Endpoint) -> tuple[socket.socket, bytes]:
    """`connect`'s blocking twin: a connected socket and the bytes read past auth.

    The connect timeout also bounds the TLS handshake and the auth exchange;
    None means the blocking client's default of 10 s.
    """
    where = endpoint.peer
    timeout = endpoint.connect_timeout or 10.0
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise TransportError(f"cannot reach gloomd at {where}: {reason}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if endpoint.ssl_context is not None:
            try:
                sock = endpoint.ssl_context.wrap_socket(sock, server_hostname=endpoint.host)
            except (OSError, ValueError) as exc:
                reason = f"TLS handshake with gloomd at {where} failed: {exc}"
                raise TransportError(reason) from None
        leftover = b""
        if endpoint.token is not None:
            leftover = _authenticate_blocking(
                sock, endpoint.token, where, timeout, endpoint.tls_hint
            )
    except BaseException:
        sock.close()
        raise
    return sock, leftover


def _authenticate_blocking(
    sock: socket.socket, token: str, where: str, timeout: float, hint: str = ""
) -> bytes:
    handshake = AuthHandshake(token)
    try:
        sock.settimeout(timeout)
        sock.sendall(handshake.request)
        while True:
            data = sock.recv(_READ_SIZE)
            if not data:
                raise TransportError(f"gloomd at {where} closed the connection during auth{hint}")
            if handshake.receive_data(data):
                return handshake.leftover
    except TimeoutError:
        raise TransportError(f"no answer to auth from gloomd at {where}") from None
    except OSError as exc:
        raise TransportError(f"connection to gloomd at {where} lost during auth: {exc}") from None
