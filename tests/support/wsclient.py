"""A trio-websocket client that always closes its socket, plain or TLS (wss).

trio-websocket's own ``open_websocket`` (0.12) waits for the server's TCP
close, as the RFC asks, and then never closes its own socket: every
conversation the server ends (which wsjobd always does) would leak one, and
``filterwarnings = error`` turns the ResourceWarning into a failure.  So we
own the TCP stream and close it ourselves.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

__all__ = ["ws_client"]

HOST = "127.0.0.1"


@asynccontextmanager
async def ws_client(
    port: int,
    resource: str = "/",
    *,
    host: str = HOST,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A websocket to `host:port`, over TLS with `ssl_context` (the name checked is `host`)."""
    tcp = await trio.open_tcp_stream(host, port)
    stream: trio.abc.Stream = tcp
    if ssl_context is not None:
        stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, host, resource)
            try:
                yield ws
            finally:
                with trio.move_on_after(5):
                    await ws.aclose()
                await trio.aclose_forcefully(tcp)  # also ends the reader task
    except BaseExceptionGroup as group:
        # The nursery wraps the body's exception, or the reader's
        # ConnectionRejected; give the test the bare exception.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await trio.aclose_forcefully(tcp)
