"""HTTP from the tests' side: hand-written requests, responses read with h11.

Requests are written as raw bytes (so a test can send exactly the malformed
input it means to) and responses are parsed by an h11 client connection,
which checks the server's framing as strictly as a real client would.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import h11
import trio

from gloomd.http import HttpService, HttpSettings
from gloomd.server import GloomServer
from gloomwire import codec


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return codec.loads(self.body)


async def start_http(nursery: trio.Nursery, server: GloomServer, **settings: Any) -> HttpService:
    """An HttpService on a free loopback port beside `server`, in `nursery`."""
    service = HttpService(server, HttpSettings(port=0, **settings))
    await nursery.start(service.run)
    return service


def build_request(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    close: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Client:
    """One HTTP/1.1 connection (keep-alive), plaintext or TLS."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = "localhost",
    ) -> Client:
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if ssl_context is not None:
            tls = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname)
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            stream = tls
        return cls(stream)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        # h11 as client: it tracks the exchange so it can read the response.
        hdrs = [("Host", "127.0.0.1"), *(headers or {}).items()]
        if body or method == "POST":
            hdrs.append(("Content-Length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=path, headers=hdrs))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        reply = await self.read_reply()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return reply

    async def read_reply(self) -> Reply:
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                headers = {k.decode(): v.decode() for k, v in response.headers}
                return Reply(response.status_code, headers, bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed before a response")

    async def at_eof(self) -> bool:
        """True when the server has closed the connection (and sends nothing more)."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True  # reset after close: closed all the same
            if not data:
                return True

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def fetch(port: int, method: str, path: str, **kwargs: Any) -> Reply:
    """One request on a fresh connection."""
    ssl_context = kwargs.pop("ssl_context", None)
    client = await Client.open(port, ssl_context=ssl_context)
    try:
        return await client.request(method, path, **kwargs)
    finally:
        await client.aclose()


async def exchange_raw(
    port: int, data: bytes, *, timeout: float = 10.0
) -> tuple[Reply | None, bool]:
    """Send raw bytes; return the response (if any) and whether the server then closed."""
    client = await Client.open(port)
    try:
        with trio.fail_after(timeout):
            await client.send_raw(data)
            # Parse the response with a fresh client connection that believes it
            # sent a GET (raw requests may be anything).
            client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.conn.send(h11.EndOfMessage())
            try:
                reply: Reply | None = await client.read_reply()
            except (EOFError, h11.RemoteProtocolError):
                reply = None
            closed = await client.at_eof()
        return reply, closed
    finally:
        await client.aclose()
