"""A stand-in master port that answers each frame with whatever the test scripts.

For checking what clients send and make of answers the real daemon gives
(or will give: the lifecycle's actions were written against the reference
before the daemon knew them).  Each decoded frame is recorded and handed to
`answer`, a function returning the frames to send back, in order (an ack, an
error frame, a result...).  Frames are built by the test by hand, so what is
checked is the wire contract, not the daemon's code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from gloomwire import codec
from gloomwire.framing import FrameDecoder, encode_frame

Answer = Callable[[dict[str, Any]], list[dict[str, Any]]]


class MasterPort:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.port = 0

    async def run(
        self, *, task_status: trio.TaskStatus[MasterPort] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(self)

    def actions(self) -> list[Any]:
        return [frame.get("action") for frame in self.received]

    async def _serve(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                out = b""
                for payload in decoder.feed(data):
                    frame = codec.loads(payload)
                    self.received.append(frame)
                    for reply in self.answer(frame):
                        out += encode_frame(reply)
                if out:
                    try:
                        await stream.send_all(out)
                    except trio.BrokenResourceError:
                        return


def paged_jobs(rows: list[dict[str, Any]]) -> Answer:
    """An `answer` for `jobs` requests over `rows`: pages by `limit` (default 100),
    the cursor being the index of the next row as ``{"at": n}`` (any JSON value
    will do: clients must treat it as opaque), null after the last row.
    Filters by `type` and `state` when asked, as gloomd does."""

    def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        if frame.get("action") != "jobs":
            return [{"error": "unknown_action", "reason": frame.get("action")}]
        chosen = [
            row
            for row in rows
            if ("type" not in frame or row["type"] == frame["type"])
            and ("state" not in frame or row["state"] == frame["state"])
        ]
        start = frame["cursor"]["at"] if "cursor" in frame else 0
        limit = frame.get("limit", 100)
        page = chosen[start : start + limit]
        end = start + len(page)
        cursor = {"at": end} if end < len(chosen) else None
        return [{"ok": True, "jobs": page, "next": cursor}]

    return answer


def row(job_id: Any, job_type: Any = "t", state: str = "queued", **fields: Any) -> dict[str, Any]:
    """A `jobs` row as the reference shapes it, in its key order."""
    base = {
        "id": job_id,
        "type": job_type,
        "priority": 0,
        "state": state,
        "attempt": 0,
        "age_s": 1.5,
        "detach": False,
    }
    base.update(fields)
    return base
