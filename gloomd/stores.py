"""What the broker keeps of finished jobs: detached results, and every job's outcome.

* Results: the final frame of each finished detached job (encoded once: a
  `result` request sends the same bytes every time), with its type's key
  (a `unique` submit attaches only to a job of its own type), kept for
  `result_ttl` seconds, at most `max_results` of them and `max_result_bytes`.
* Outcomes: ok or not, of every finished job, for `after` (a job may name
  one that already ended), kept as long, capped in count and bytes.

Both expire in the order they were stored, since the TTL is the same for
all: an OrderedDict is both the index and the expiry queue.  Dead letters
are not here: a dead job is held (`gloomd.state`), not under the TTL.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from .state import JobId

__all__ = ["STORE_ENTRY_BYTES", "Stores", "id_bytes"]

#: What one entry of the result or outcome store costs besides its id and
#: frame, for the byte caps: the OrderedDict slot and link, the tuple, the
#: float (measured with tracemalloc: 230-250 bytes per entry).
STORE_ENTRY_BYTES: Final = 256


def id_bytes(job_id: JobId) -> int:
    """What an outcome entry costs, for the byte cap: the id and the entry."""
    if isinstance(job_id, str):
        return len(job_id) + STORE_ENTRY_BYTES
    return job_id.bit_length() // 8 + STORE_ENTRY_BYTES


class Stores:
    """The result store and the outcome store, with their caps."""

    __slots__ = (
        "dropped",
        "max_outcome_bytes",
        "max_result_bytes",
        "max_results",
        "outcome_bytes",
        "outcomes",
        "result_bytes",
        "results",
        "ttl",
    )

    def __init__(
        self, ttl: float, max_results: int, max_result_bytes: int, max_outcome_bytes: int
    ) -> None:
        self.ttl = ttl
        self.max_results = max_results
        self.max_result_bytes = max_result_bytes
        self.max_outcome_bytes = max_outcome_bytes
        #: id -> (expires, final frame, type key)
        self.results: OrderedDict[JobId, tuple[float, bytes, bytes | str]] = OrderedDict()
        #: id -> (expires, ok)
        self.outcomes: OrderedDict[JobId, tuple[float, bool]] = OrderedDict()
        self.result_bytes = 0
        self.outcome_bytes = 0
        #: With a journal: the set the ids of results dropped (expired, or past
        #: a cap) go to, so that their rows go too (`gloomd.durable`).
        self.dropped: set[JobId] | None = None

    def store_result(self, job_id: JobId, key: bytes | str, frame: bytes, now: float) -> float:
        """Keep a detached job's final frame; returns when it expires."""
        store = self.results
        old = store.pop(job_id, None)
        if old is not None:
            self.result_bytes -= len(old[1]) + STORE_ENTRY_BYTES
        expires = now + self.ttl
        store[job_id] = (expires, frame, key)
        self.result_bytes += len(frame) + STORE_ENTRY_BYTES
        while len(store) > self.max_results or self.result_bytes > self.max_result_bytes:
            gone, (_, dropped, _) = store.popitem(last=False)  # the oldest first
            self.result_bytes -= len(dropped) + STORE_ENTRY_BYTES
            if self.dropped is not None:
                self.dropped.add(gone)
        return expires

    def record_outcome(self, job_id: JobId, ok: bool, now: float) -> float:
        """Keep a job's outcome for `after`; returns when it expires.  (Every job ends here.)"""
        store = self.outcomes
        # `id_bytes`, inlined.
        if type(job_id) is str:
            size = len(job_id) + STORE_ENTRY_BYTES
        else:
            size = job_id.bit_length() // 8 + STORE_ENTRY_BYTES  # type: ignore[union-attr]
        total = self.outcome_bytes + size
        if store.pop(job_id, None) is not None:
            total -= size
        expires = now + self.ttl
        store[job_id] = (expires, ok)
        while len(store) > self.max_results or total > self.max_outcome_bytes:
            dropped, _ = store.popitem(last=False)
            total -= id_bytes(dropped)
        self.outcome_bytes = total
        return expires

    def first(self) -> float:
        """The earliest expiry held, or inf."""
        first = float("inf")
        if self.results:
            first = next(iter(self.results.values()))[0]
        if self.outcomes:
            first = min(first, next(iter(self.outcomes.values()))[0])
        return first

    def expire(self, now: float, budget: int) -> int:
        """Drop what expired by `now`, at most `budget` entries; returns the budget left."""
        results = self.results
        while results and budget > 0:
            key, (expires, stored, _) = next(iter(results.items()))
            if expires > now:
                break
            budget -= 1
            del results[key]
            self.result_bytes -= len(stored) + STORE_ENTRY_BYTES
            if self.dropped is not None:
                self.dropped.add(key)
        outcomes = self.outcomes
        while outcomes and budget > 0:
            job_id, (until, _) = next(iter(outcomes.items()))
            if until > now:
                break
            budget -= 1
            del outcomes[job_id]
            self.outcome_bytes -= id_bytes(job_id)
        return budget
