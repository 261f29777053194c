"""A per-connection budget of log lines (a token bucket), and what it held back.

Some log events follow from a peer's frames (a slave's `join`, its `fail`):
10,000 re-joins a second logged 8 MB per 10 s at info level (issue 18), which
is disk and CPU a peer can spend at will.  Each connection gets a bucket of
`burst` lines refilled at `rate` lines per second; a line over the budget is
counted, not written, and the count is reported in one `event=log_suppressed`
line when the connection may log again (and at its disconnect).
"""

from __future__ import annotations

import logging

__all__ = ["LogBudget"]

log = logging.getLogger("gloomd.broker")


class LogBudget:
    """One connection's bucket.  It starts full (`allow` sees `stamp` None)."""

    __slots__ = ("tokens", "stamp", "suppressed")

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
            log.info("event=log_suppressed peer=%s lines=%d", peer, self.suppressed)
            self.suppressed = 0
        return True
