"""The test side of the gate the gated jobs in `jobs` report to (runs on trio)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import trio


@dataclass
class Arrival:
    """A job that reached the gate: what it said, and the line to answer it on."""

    info: dict[str, Any]
    stream: trio.SocketStream

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    async def release(self) -> None:
        await self.stream.send_all(b"go\n")


class Gate:
    def __init__(self) -> None:
        self.port = 0
        self._send, self._arrivals = trio.open_memory_channel[Arrival](math.inf)

    async def serve(self, *, task_status: trio.TaskStatus[Gate] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        self._send.send_nowait(Arrival(json.loads(data.split(b"\n", 1)[0]), stream))
        await trio.sleep_forever()  # keep the stream open until the test ends

    async def next(self, timeout: float = 20.0) -> Arrival:
        with trio.fail_after(timeout):
            return await self._arrivals.receive()

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"gate": self.port, **extra}


async def open_gate(nursery: trio.Nursery) -> Gate:
    gate = Gate()
    await nursery.start(gate.serve)
    return gate
