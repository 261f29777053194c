"""Rate-limited log events, for lines a remote peer can trigger at will.

One line per refused or timed-out connection is what an operator wants to see
when it happens now and then, and what fills a disk when a client opens ten
thousand connections a second.  :class:`RateLimitedLog` lets each event name
through at most ``burst`` times per ``window`` seconds; the lines it holds back
are counted, and the first line of the event after the window closes says how
many were held back (``suppressed=N``), so nothing is lost silently.

The clock is a parameter so tests drive it; the daemon uses ``time.monotonic``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog"]


class _Window:
    __slots__ = ("start", "count", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.suppressed = 0


class RateLimitedLog:
    """Log through `logger`, at most `burst` lines per event per `window` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, level: int, event: str, fmt: str = "", *args: Any, exc_info: Any = None) -> None:
        """Log ``event=<event> <fmt % args>`` unless `event` used up its burst.

        Lines below the logger's level are not counted: at the default level a
        debug event costs one level check, as a plain ``log.debug`` does.
        """
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        window = self._windows.get(event)
        held_back = 0
        if window is None or now - window.start >= self._window:
            if window is not None:
                held_back = window.suppressed
            window = self._windows[event] = _Window(now)
        if window.count >= self._burst:
            window.suppressed += 1
            return
        window.count += 1
        text = f"event={event}"
        if fmt:
            text += " " + fmt
        if held_back:
            text += f" suppressed={held_back}"
        self._logger.log(level, text, *args, exc_info=exc_info)
