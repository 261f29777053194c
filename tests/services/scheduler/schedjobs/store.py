"""An in-memory `dump_status`/`reload_status` pair that tests can wait on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio


class Store:
    """Keeps every snapshot the scheduler dumps; `wait_until` awaits a condition.

    `wait_until` has no trio timeout of its own: on a MockClock it would
    expire in mock time while a worker thread runs.  Callers on the real clock
    wrap it in `fail_after`; pytest-timeout bounds the rest.
    """

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        self.snapshots: list[dict[str, Any]] = []
        self.initial = initial
        self._changed = trio.Event()

    def dump(self, status: dict[str, Any]) -> None:
        self.snapshots.append(status)
        self._changed.set()
        self._changed = trio.Event()

    def reload(self) -> dict[str, Any] | None:
        return self.initial

    @property
    def last(self) -> dict[str, Any]:
        return self.snapshots[-1]

    async def wait_until(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while not (self.snapshots and pred(self.snapshots[-1])):
            await self._changed.wait()
        return self.last
