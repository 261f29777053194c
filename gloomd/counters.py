"""Per-type counters for /metrics and for `stats` rows: kept as jobs pass, read at scrape time.

A type's `TypeTally` counts what its jobs did: how many were submitted, how
many finished by each outcome, and two histograms, the seconds from ready to
taken by a slave (wait) and from taken to answered (run).  Tallies live in
`Tallies`, a dict that outlives the types' queues (a type whose queue empties
and fills again keeps counting), capped: past `cap` types every further type
counts into one record, `other` (labelled "_other", as `gloomd.http.metrics`
does for its rows).  A type literally named "_other" counts there too.

Cost per job, measured on the 2-core benchmark VM: the broker adds one to
`submitted`, one to an outcome and one bucket to each histogram (a `bisect`
over 20 bounds and a float add), about 0.3 us a job, with the clock read
once at the submit and once at the answer (see `gloomd.broker`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

__all__ = [
    "BOUNDS",
    "OTHER",
    "OUTCOMES",
    "Tallies",
    "TypeTally",
    "label_of",
]

#: Outcomes of a finished job, in the order of gloomd_jobs_finished_total.
OUTCOMES: Final = ("ok", "error", "timeout", "crash", "cancelled", "halted", "dependency")
OK, ERROR, TIMEOUT, CRASH, CANCELLED, HALTED, DEPENDENCY = range(7)
#: A slave's `fail` category -> its outcome.
CATEGORY_OUTCOME: Final = {"ERROR": ERROR, "TIMEOUT": TIMEOUT, "CRASH": CRASH, "HALTED": HALTED}
#: Outcomes `stats` counts as failed (cancelled jobs are counted apart).
FAILED: Final = (ERROR, TIMEOUT, CRASH, HALTED, DEPENDENCY)

#: Histogram bounds in seconds (fixed: a millisecond to an hour), shared by
#: the wait and the run histogram; counts are per bucket plus one above the
#: last bound, as `gloomd.http.metrics.HistogramSnapshot` takes them.
BOUNDS: Final = (
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
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: The label of the record past the cap.
OTHER: Final = "_other"


def label_of(key: bytes | str) -> str:
    """A type's label: the type if a string, else its canonical JSON (its key)."""
    return key if isinstance(key, str) else key.decode("utf-8")


class TypeTally:
    """One type's counters (or the overflow record's)."""

    __slots__ = (
        "finished",
        "label",
        "run_counts",
        "run_sum",
        "submitted",
        "wait_counts",
        "wait_sum",
    )

    def __init__(self, label: str) -> None:
        self.label = label
        self.submitted = 0
        #: Jobs finished, by outcome index (OUTCOMES).
        self.finished = [0] * len(OUTCOMES)
        self.wait_counts = [0] * (len(BOUNDS) + 1)
        self.wait_sum = 0.0
        self.run_counts = [0] * (len(BOUNDS) + 1)
        self.run_sum = 0.0

    def waited(self, seconds: float) -> None:
        self.wait_counts[bisect_left(BOUNDS, seconds)] += 1
        self.wait_sum += seconds

    def ran(self, seconds: float) -> None:
        self.run_counts[bisect_left(BOUNDS, seconds)] += 1
        self.run_sum += seconds

    @property
    def completed(self) -> int:
        return self.finished[OK]

    @property
    def failed(self) -> int:
        finished = self.finished
        return sum(finished[outcome] for outcome in FAILED)


class Tallies:
    """Tallies by type key, at most `cap` of them, then `other`."""

    __slots__ = ("by_key", "cap", "other")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.by_key: dict[bytes | str, TypeTally] = {}
        self.other = TypeTally(OTHER)

    def of(self, key: bytes | str) -> TypeTally:
        """The tally of a type, made on first use (the overflow record past the cap)."""
        tally = self.by_key.get(key)
        if tally is not None:
            return tally
        label = label_of(key)
        if len(self.by_key) >= self.cap or label == OTHER:
            return self.other
        tally = self.by_key[key] = TypeTally(label)
        return tally

    def own(self, tally: TypeTally) -> bool:
        """Does `tally` count one type alone (not the overflow record)?"""
        return tally is not self.other
