"""Log lines a remote peer can cause at will, on a budget.

One line per refused connection, per re-join or per failed job is what an
operator wants to see when it happens now and then, and what fills a disk
when a peer does it ten thousand times a second (issue 18: 10,000 re-joins a
second logged 8 MB per 10 s at info level).  Two budgets, for two shapes of
traffic; both count what they hold back and say so in the next line they let
through, so nothing is lost silently.

* `LogBudget`: per connection, a token bucket of `burst` lines refilled at
  `rate` lines per second (the broker: lines that follow from one peer's
  frames).  The count is reported in one `event=log_suppressed` line when
  the connection may log again, and at its disconnect.
* `RateLimitedLog`: per event name, at most `burst` lines per `window`
  seconds (the websocket service: lines that follow from connecting at all,
  where there is no connection yet to charge).  The first line of the event
  after the window closes carries `suppressed=N`.

Clocks are parameters, so tests drive them; the daemon uses trio's clock
(broker) and `time.monotonic` (websocket service).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gloomwire.logformat import event

__all__ = ["LogBudget", "RateLimitedLog"]

log = logging.getLogger("gloomd.broker")


# ---------------------------------------------------------------- per connection


class LogBudget:
    """One connection's bucket.  It starts full (`allow` sees `stamp` None)."""

    __slots__ = ("stamp", "suppressed", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp: float | None = None
        #: Lines held back since the last one written.
        self.suppressed = 0

    def allow(self, now: float, rate: float, burst: int, peer: str) -> bool:
        """May one more line be written at `now`?  Counts it when not."""
        if self.stamp is None:
            tokens = float(burst)
        else:
            tokens = min(float(burst), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            self.suppressed += 1
            return False
        self.tokens = tokens - 1.0
        if self.suppressed:
            event(log, "log_suppressed", peer=peer, lines=self.suppressed)
            self.suppressed = 0
        return True


# ---------------------------------------------------------------- per event


class _Window:
    __slots__ = ("count", "start", "suppressed")

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

    def log(self, level: int, name: str, /, *, exc_info: Any = None, **fields: Any) -> None:
        """Log event `name` with `fields` unless `name` used up its burst.

        Lines below the logger's level are not counted: at the default level a
        debug event costs one level check, as a plain ``log.debug`` does.
        """
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        window = self._windows.get(name)
        held_back = 0
        if window is None or now - window.start >= self._window:
            if window is not None:
                held_back = window.suppressed
            window = self._windows[name] = _Window(now)
        if window.count >= self._burst:
            window.suppressed += 1
            return
        window.count += 1
        if held_back:
            fields["suppressed"] = held_back
        event(self._logger, name, level, exc_info=exc_info, **fields)
