"""A TCP proxy the tests put between a runner and gloomd, to cut or silence links.

`freeze()` makes every current connection swallow bytes both ways without
closing (a hung daemon, as the runner sees it); `cut()` closes them all (a
network failure).  Connections made later pass through normally.  Frames the
runner sends are decoded and recorded, so a test can wait for, say, the third
ping without sleeping.
"""

from __future__ import annotations

from typing import Any

import trio

from gloomwire import codec
from gloomwire.framing import FrameDecoder


class _Pair:
    def __init__(self, ident: int, client: trio.SocketStream, server: trio.SocketStream) -> None:
        self.id = ident
        self.client = client
        self.server = server
        self.frozen = False
        self.scope = trio.CancelScope()


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.pairs: list[_Pair] = []
        self.sent: list[tuple[int, dict[str, Any]]] = []  # (pair id, frame) runner -> gloomd
        self.connections = 0
        self._changed = trio.Event()

    async def serve(
        self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except BaseException:
            await trio.aclose_forcefully(client)
            raise
        pair = _Pair(self.connections, client, server)
        self.connections += 1
        self.pairs.append(pair)
        self._notify()
        try:
            with pair.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, pair, client, server, True, nursery.cancel_scope)
                    nursery.start_soon(
                        self._pump, pair, server, client, False, nursery.cancel_scope
                    )
        finally:
            with trio.CancelScope(shield=True):
                for stream in (client, server):
                    await stream.aclose()
            self.pairs.remove(pair)
            self._notify()

    async def _pump(
        self,
        pair: _Pair,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        record: bool,
        scope: trio.CancelScope,
    ) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if pair.frozen:
                    continue
                if record:
                    for payload in decoder.feed(data):
                        self.sent.append((pair.id, codec.loads(payload)))
                    self._notify()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    def freeze(self) -> None:
        for pair in self.pairs:
            pair.frozen = True

    def cut(self) -> None:
        for pair in self.pairs:
            pair.scope.cancel()

    def live(self) -> int:
        return sum(1 for pair in self.pairs if not pair.frozen)
