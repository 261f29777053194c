"""The store's own figures: commit count, commit-time histogram, recent p99.

`commit` runs in a worker thread while the loop thread reads `stats` or
scrapes `/metrics`, so the figures sit behind one lock (held for a few
hundred nanoseconds per commit, nothing beside a commit's fsync).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from typing import Final, NamedTuple

#: Bucket bounds (seconds) of gloomd_journal_commit_seconds: from a commit
#: that touched only the page cache (synchronous=NORMAL, ~0.2 ms) to one
#: stuck behind a slow disk or a long checkpoint.
COMMIT_BOUNDS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

#: How many recent commits `p99_ms` looks at: enough for a p99 to mean
#: something (ten samples above it), few enough to follow a disk that slows.
P99_WINDOW: Final = 1000


class CommitHistogram(NamedTuple):
    """A Prometheus histogram's parts: counts per bucket, not cumulative.

    `counts` has one more entry than `bounds`: the commits slower than the
    last bound (Prometheus' +Inf bucket).  A commit of exactly a bound's
    seconds counts in that bound's bucket (``le``: less or equal).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float


class CommitFigures:
    """Counts commits and their seconds; safe to read from another thread."""

    def __init__(self, bounds: tuple[float, ...] = COMMIT_BOUNDS, window: int = P99_WINDOW):
        if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("histogram bounds must ascend strictly")
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0
        self._recent: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        slot = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[slot] += 1
            self._total += seconds
            self._recent.append(seconds)

    @property
    def commits(self) -> int:
        with self._lock:
            return sum(self._counts)

    def histogram(self) -> CommitHistogram:
        with self._lock:
            return CommitHistogram(self._bounds, tuple(self._counts), self._total)

    def p99_ms(self) -> float:
        """The 99th percentile of the recent commits in ms (nearest rank); 0.0 before any."""
        with self._lock:
            recent = sorted(self._recent)
        if not recent:
            return 0.0
        return recent[math.ceil(0.99 * len(recent)) - 1] * 1000.0
