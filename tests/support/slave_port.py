"""A stand-in slave port that hands out job frames exactly as given.

For checking what clients make of frames the real daemon may or may not send
(a job frame without ``attempt``, as gloomd sends a first delivery and Gloom
sent every one).  It answers ``ping``, ``join``, ``respond`` and ``fail``
with ``{"ok":true}``, gives each joined connection the next job frame (one at
a time, the next after an answer), and records every frame it received.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from gloomwire import codec
from gloomwire.framing import FrameDecoder, encode_frame

OK = encode_frame({"ok": True})
#: The type a leaving worker slot parks on (gloom's PARKING_TYPE).
PARKING = ["gloom.worker", "leaving"]


class SlavePort:
    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = deque(jobs)
        self.received: list[dict[str, Any]] = []
        self.port = 0
        self.changed = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[SlavePort] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self)

    def answers(self) -> list[dict[str, Any]]:
        return [f for f in self.received if f.get("action") in ("respond", "fail")]

    async def wait_answers(self, count: int) -> list[dict[str, Any]]:
        while len(self.answers()) < count:
            changed = self.changed
            await changed.wait()
        return self.answers()

    async def _serve(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        joined = False
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                for payload in decoder.feed(data):
                    frame = codec.loads(payload)
                    self.received.append(frame)
                    self.changed.set()
                    self.changed = trio.Event()
                    action = frame.get("action")
                    if action == "progress":
                        continue
                    out = OK
                    if action == "join":
                        joined = frame.get("type") != PARKING
                    if joined and action in ("join", "respond", "fail") and self.jobs:
                        out += encode_frame(self.jobs.popleft())
                    await stream.send_all(out)
