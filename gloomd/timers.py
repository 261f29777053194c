"""Deadlines of jobs, kept in heaps whose stale entries are dropped lazily.

Two heaps use this: running jobs' timeouts (`Job.deadline`) and delayed
jobs' readiness (`Job.ready_at`, a `delay` or a retry's back-off).  The
deadline itself lives on the job; an entry is live while the job is still
in the heap's state with that very deadline, so a job that finished, was
cancelled or was given a new deadline needs no removal: its entry is
skipped when it comes up.  Stale entries are swept once they are half the
heap, which bounds what finished jobs keep alive.

How much one pass of the event loop fires is bounded by the broker (see
`Broker.tick`): a million jobs due at one moment are made ready a few
thousand at a time, between which every connection is served.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Final

from .state import DELAYED, RUNNING, Job

__all__ = ["MIN_SWEEP", "DeadlineHeap", "delay_alive", "timeout_alive"]

#: Size of a heap below which stale entries are never swept.
MIN_SWEEP: Final = 1024


def timeout_alive(when: float, job: Job) -> bool:
    return job.state == RUNNING and job.deadline == when


def delay_alive(when: float, job: Job) -> bool:
    return job.state == DELAYED and job.ready_at == when


class DeadlineHeap:
    """`(when, order, job)` entries; `order` breaks ties in the order jobs were pushed."""

    __slots__ = ("_alive", "_cap", "entries")

    def __init__(self, alive: Callable[[float, Job], bool]) -> None:
        self.entries: list[tuple[float, int, Job]] = []
        self._alive = alive
        self._cap = MIN_SWEEP

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, when: float, order: int, job: Job) -> None:
        entries = self.entries
        if len(entries) >= self._cap:
            alive = self._alive
            # In place: `pop_due` may be iterating this very list.
            entries[:] = [e for e in entries if alive(e[0], e[2])]
            heapq.heapify(entries)
            self._cap = max(MIN_SWEEP, 2 * len(entries))
        heapq.heappush(entries, (when, order, job))

    def first(self) -> float:
        """The earliest deadline held (stale ones included), or inf."""
        return self.entries[0][0] if self.entries else float("inf")

    def pop_due(self, now: float) -> Job | None:
        """The next live job due at `now`, taken off the heap; None when none is due."""
        entries = self.entries
        alive = self._alive
        while entries and entries[0][0] <= now:
            when, _, job = heapq.heappop(entries)
            if alive(when, job):
                return job
        return None

    def jobs(self) -> list[Job]:
        """Every live job, in deadline order (for tests and shutdown; O(n log n))."""
        alive = self._alive
        return [e[2] for e in sorted(self.entries, key=lambda e: (e[0], e[1])) if alive(e[0], e[2])]
