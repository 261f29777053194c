"""A closed connection's memory is freed when it closes, not at the next GC (issue 18).

60 connections that each sent most of a 16 MiB frame and closed used to hold
1 GB until the next full collection: the connection and its peer kept each
other alive, and the reactor's deadline heap kept the connection.  With the
collector off, nothing of a closed connection may survive its release.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from gloomd.broker import MasterPeer
from gloomd.transport import PlainConnection
from gloomwire.framing import FrameDecoder
from tests.support.wire import Peer

pytestmark = pytest.mark.timeout(30)

PARTIAL = 4 * 1024 * 1024  # bytes sent of a frame that never completes


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive(kind: type) -> int:
    """Instances of `kind` still alive (tracked by the collector, which is off)."""
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def on_release(server: Any, monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    released = trio.Event()
    real_release = server.release

    def release(conn: Any, reason: str) -> None:
        real_release(conn, reason)
        released.set()

    monkeypatch.setattr(server, "release", release)
    return released


async def test_nothing_of_a_closed_connection_survives(
    make_server: Any, monkeypatch: pytest.MonkeyPatch, no_gc: None
) -> None:
    server = await make_server(frame_timeout=30.0)
    released = on_release(server, monkeypatch)
    kinds = (PlainConnection, MasterPeer, FrameDecoder)
    counts = [alive(kind) for kind in kinds]
    peer = await Peer.connect(server.master_port)
    assert await peer.request({"action": "ping"}) == {"ok": True}
    assert [alive(kind) for kind in kinds] == [n + 1 for n in counts]

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        # A frame that has started (so a frame deadline is armed) and never ends.
        await peer.send_raw(struct.pack(">I", 16 * 1024 * 1024 - 1) + b"x" * PARTIAL)
        await peer.aclose()
        with trio.fail_after(10):
            await released.wait()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before >= PARTIAL  # the daemon did hold the partial frame...
    assert after - before < PARTIAL // 4  # ...and let go of it on release
    assert [alive(kind) for kind in kinds] == counts
