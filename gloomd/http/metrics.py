"""`GET /metrics`: the broker's counters, read at scrape time, in Prometheus text.

Nothing here runs per job.  A scrape takes a `MetricsSnapshot` of the broker
(plain numbers, built in one synchronous pass on the event loop, so every
figure belongs to the same moment) and a custom prometheus_client collector
turns it into metric families that `generate_latest` renders over a registry
of its own; a large snapshot is rendered in a worker thread (see `routes`).  The
global registry (with its process and GC collectors) is not used: it would
add series the daemon does not vouch for, and it is shared by every library
in the process.

Metric names are those of durability-and-operations.md section 3:

    gloomd_jobs_submitted_total{type}            counter
    gloomd_jobs_finished_total{type,outcome}     counter
    gloomd_jobs{type,state}                      gauge
    gloomd_slaves{type,state}                    gauge (idle, busy)
    gloomd_job_wait_seconds{type}                histogram
    gloomd_job_run_seconds{type}                 histogram
    gloomd_connections{port}                     gauge
    gloomd_journal_commit_seconds                histogram
    gloomd_build_info{version,...}               gauge, always 1

plus three that mirror `stats` where it has no per-type figure:
`gloomd_job_events_total{event}` (stats' totals), `gloomd_waiting_jobs`
(stats' daemon-wide `waiting`) and `gloomd_uptime_seconds`.

What a snapshot holds
---------------------
Per type: the jobs in each state and the slaves (from the type's queue,
while it has one) and the counters (`gloomd.counters.TypeTally`: submitted,
finished by outcome, the wait and run histograms), which outlive the queue:
a type whose jobs all finished keeps its counters.  A None field means "not
kept": the series is not exported at all (rather than exported as 0, which
would claim a fact); the broker keeps every field, the journal's commit
histogram only with ``--journal``.

Label cardinality: a type's label is the type if it is a string, else its
canonical JSON.  The first `max_types` types in the broker's order (oldest
first) get a label of their own; every further type is summed under
type="_other", and so is a type literally named "_other".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gloomwire import codec

from ..broker import Broker, TypeQueue
from ..counters import BOUNDS, TypeTally
from ..counters import OTHER as COUNTERS_OTHER
from ..counters import OUTCOMES as COUNTED_OUTCOMES

__all__ = [
    "CONTENT_TYPE",
    "JOB_STATES",
    "OTHER",
    "OUTCOMES",
    "HistogramSnapshot",
    "MetricsSnapshot",
    "SnapshotCollector",
    "TypeMetrics",
    "metric_families",
    "render",
    "snapshot_from_broker",
    "type_label",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: Outcomes of gloomd_jobs_finished_total, in the reference's order.
OUTCOMES: Final = COUNTED_OUTCOMES
#: States of gloomd_jobs.
JOB_STATES: Final = ("queued", "delayed", "waiting", "running", "dead")
#: The label that sums the types past the cap (the broker's counters use the same).
OTHER: Final = COUNTERS_OTHER


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One histogram's state: counts per bucket (not cumulative) and the sum.

    `counts` has one more entry than `bounds`: the observations above the
    last bound (Prometheus' +Inf bucket takes them too).
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a histogram needs one count per bound plus one for +Inf")
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError("histogram bounds must ascend")

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, observations at or below it), ending with +Inf."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            buckets.append((_float_text(bound), float(running)))
        buckets.append(("+Inf", float(running + self.counts[-1])))
        return buckets

    def plus(self, other: HistogramSnapshot) -> HistogramSnapshot:
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different bounds")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=False))
        return HistogramSnapshot(self.bounds, counts, self.total + other.total)


@dataclass(frozen=True, slots=True)
class TypeMetrics:
    """One type's row.  None: the broker does not keep that figure (not exported)."""

    label: str
    queued: int = 0
    running: int = 0
    slaves_idle: int = 0
    slaves_busy: int = 0
    delayed: int | None = None
    waiting: int | None = None
    dead: int | None = None
    submitted: int | None = None
    #: outcome (one of OUTCOMES) -> jobs of this type that ended so.
    finished: Mapping[str, int] | None = None
    wait_seconds: HistogramSnapshot | None = None
    run_seconds: HistogramSnapshot | None = None

    def state_counts(self) -> Iterator[tuple[str, int]]:
        """(state, jobs) for the states this row knows, in JOB_STATES order."""
        values = (self.queued, self.delayed, self.waiting, self.running, self.dead)
        for state, value in zip(JOB_STATES, values, strict=False):
            if value is not None:
                yield state, value

    def plus(self, other: TypeMetrics, label: str) -> TypeMetrics:
        """The sum of two rows (for type="_other"); a figure one side lacks is lacking."""
        return TypeMetrics(
            label=label,
            queued=self.queued + other.queued,
            running=self.running + other.running,
            slaves_idle=self.slaves_idle + other.slaves_idle,
            slaves_busy=self.slaves_busy + other.slaves_busy,
            delayed=_add(self.delayed, other.delayed),
            waiting=_add(self.waiting, other.waiting),
            dead=_add(self.dead, other.dead),
            submitted=_add(self.submitted, other.submitted),
            finished=_add_counts(self.finished, other.finished),
            wait_seconds=_add_hist(self.wait_seconds, other.wait_seconds),
            run_seconds=_add_hist(self.run_seconds, other.run_seconds),
        )


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything one scrape reports, taken at one moment."""

    types: tuple[TypeMetrics, ...]
    #: stats' totals: submitted, completed, failed, requeued, cancelled (and
    #: whatever the broker adds), exported as gloomd_job_events_total{event}.
    totals: Mapping[str, int]
    #: stats' daemon-wide `waiting` (jobs held back by `after`).
    waiting: int
    #: port name ("master", "slave", "http", ...) -> open connections.
    connections: Mapping[str, int]
    uptime_s: float
    build: Mapping[str, str] = field(default_factory=dict)
    #: None: no journal (the daemon runs without one, or has none yet).
    journal_commit_seconds: HistogramSnapshot | None = None


def type_label(queue: TypeQueue) -> str:
    """A type's label: the type itself if a string, else its canonical JSON.

    The broker already keys non-string types by canonical JSON bytes
    (`messages._key`), so this costs a decode, not an encode.
    """
    key = queue.key
    return key if isinstance(key, str) else key.decode("utf-8")


def snapshot_from_stats(
    stats: Mapping[str, Any],
    *,
    max_types: int,
    connections: Mapping[str, int],
    build: Mapping[str, str] | None = None,
) -> MetricsSnapshot:
    """A snapshot from a `stats` answer: the cluster's figures (``--cluster``).

    The cluster keeps per type its gauges and completed/failed counts, not
    the outcomes by category nor the wait and run histograms: those are not
    exported rather than exported wrong (README: Scaling out).  Types past
    `max_types` are summed into "_other"; so are the stats answer's omitted ones.
    """
    kept: list[TypeMetrics] = []
    other: TypeMetrics | None = None
    rows = list(stats.get("types", ()))
    omitted = stats.get("types_omitted")
    if omitted is not None:
        rows.append({"type": None, "omitted": True, **omitted})
    for row in rows:
        job_type = row["type"]
        label = job_type if type(job_type) is str else codec.canonical(job_type).decode()
        metrics = TypeMetrics(
            label=label,
            queued=row["queued"],
            running=row["running"],
            slaves_idle=row["idle"],
            slaves_busy=row["slaves"] - row["idle"],
            delayed=row["delayed"],
            waiting=row["waiting"],
            dead=row["dead"],
        )
        if len(kept) < max_types and not row.get("omitted") and label != OTHER:
            kept.append(metrics)
        else:
            other = metrics if other is None else other.plus(metrics, OTHER)
    if other is not None:
        kept.append(replace(other, label=OTHER))
    return MetricsSnapshot(
        types=tuple(kept),
        totals=dict(stats["totals"]),
        waiting=stats["waiting"],
        connections=dict(connections),
        uptime_s=stats["uptime_s"],
        build=dict(build or {}),
    )


def snapshot_from_broker(
    broker: Broker,
    *,
    now: float,
    max_types: int,
    connections: Mapping[str, int],
    build: Mapping[str, str] | None = None,
) -> MetricsSnapshot:
    """Read the broker as it is now (no await may run while this does).

    `now` is on the broker's clock (the server gives it trio's), for uptime.
    Rows come in the order types were first seen: the types with counters of
    their own (`broker.tallies`, capped by `--metrics-max-types` too), the
    first `max_types` of them with a label of their own, then "_other".
    Cost: one pass over the live types and one over the tallies, O(types),
    and nothing that grows with the number of jobs.
    """
    tallies = broker.tallies
    # Gauges of the live queues, summed per tally in plain ints (a row object
    # per type would cost 3 us each: 15 ms a scrape at 5,000 types); the
    # types past the broker's cap all count into `tallies.other`.
    gauges: dict[int, list[int]] = {}
    for queue in broker.types.values():
        idle = len(queue.idle)
        # A joined slave that is not idle holds a job (an orphan included: it
        # is still working and gets nothing new until it answers).
        sums = gauges.get(id(queue.tally))
        if sums is None:
            sums = gauges[id(queue.tally)] = [0] * 7
        sums[0] += queue.queued
        sums[1] += queue.running
        sums[2] += idle
        sums[3] += queue.slaves - idle
        sums[4] += queue.delayed
        sums[5] += queue.waiting
        sums[6] += queue.dead
    kept: list[TypeMetrics] = []
    other = _Sums()
    other.add(tallies.other, gauges.get(id(tallies.other)))
    for tally in tallies.by_key.values():
        sums = gauges.get(id(tally))
        if len(kept) < max_types and tally.label != OTHER:
            kept.append(_row(tally.label, tally, sums or [0] * 7))
        else:
            other.add(tally, sums)
    if other.seen:
        kept.append(other.row())
    journal = broker.journal
    commits = None
    if journal is not None and journal.histogram is not None:
        commits = HistogramSnapshot(*journal.histogram())
    return MetricsSnapshot(
        types=tuple(kept),
        totals=dict(broker.totals),
        waiting=broker.waiting_total,
        connections=dict(connections),
        uptime_s=now - broker.started,
        build=dict(build or {}),
        journal_commit_seconds=commits,
    )


def _histogram(counts: Sequence[int], total: float) -> HistogramSnapshot:
    return HistogramSnapshot(BOUNDS, tuple(counts), total)


def _row(label: str, tally: TypeTally, sums: Sequence[int]) -> TypeMetrics:
    queued, running, idle, busy, delayed, waiting, dead = sums
    return TypeMetrics(
        label=label,
        queued=queued,
        running=running,
        slaves_idle=idle,
        slaves_busy=busy,
        delayed=delayed,
        waiting=waiting,
        dead=dead,
        submitted=tally.submitted,
        finished=dict(zip(COUNTED_OUTCOMES, tally.finished, strict=True)),
        wait_seconds=_histogram(tally.wait_counts, tally.wait_sum),
        run_seconds=_histogram(tally.run_counts, tally.run_sum),
    )


class _Sums:
    """The "_other" row: tallies and gauges of every type past the cap, summed."""

    def __init__(self) -> None:
        self.tally = TypeTally(OTHER)
        self.gauges = [0] * 7
        self.seen = False

    def add(self, tally: TypeTally, gauges: Sequence[int] | None) -> None:
        total = self.tally
        if tally.submitted or any(tally.finished) or gauges is not None:
            self.seen = True
        total.submitted += tally.submitted
        total.finished = [a + b for a, b in zip(total.finished, tally.finished, strict=True)]
        total.wait_counts = [
            a + b for a, b in zip(total.wait_counts, tally.wait_counts, strict=True)
        ]
        total.run_counts = [a + b for a, b in zip(total.run_counts, tally.run_counts, strict=True)]
        total.wait_sum += tally.wait_sum
        total.run_sum += tally.run_sum
        if gauges is not None:
            self.gauges = [a + b for a, b in zip(self.gauges, gauges, strict=True)]

    def row(self) -> TypeMetrics:
        return _row(OTHER, self.tally, self.gauges)


def metric_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    """The families of one snapshot, in a fixed order (a pure function)."""
    submitted = CounterMetricFamily(
        "gloomd_jobs_submitted", "Jobs accepted, by type.", labels=["type"]
    )
    finished = CounterMetricFamily(
        "gloomd_jobs_finished",
        "Jobs that ended, by type and outcome (ok, error, timeout, crash, cancelled, halted, "
        "dependency).",
        labels=["type", "outcome"],
    )
    jobs = GaugeMetricFamily(
        "gloomd_jobs", "Jobs held now, by type and state.", labels=["type", "state"]
    )
    slaves = GaugeMetricFamily(
        "gloomd_slaves", "Joined slaves, by type and state (idle, busy).", labels=["type", "state"]
    )
    wait = HistogramMetricFamily(
        "gloomd_job_wait_seconds",
        "Seconds from a job being ready to a slave taking it, by type.",
        labels=["type"],
    )
    run = HistogramMetricFamily(
        "gloomd_job_run_seconds",
        "Seconds from a slave taking a job to its answer, by type.",
        labels=["type"],
    )
    for row in snap.types:
        labels = [row.label]
        if row.submitted is not None:
            submitted.add_metric(labels, row.submitted)
        if row.finished is not None:
            for outcome in _outcome_order(row.finished):
                finished.add_metric([row.label, outcome], row.finished[outcome])
        for state, value in row.state_counts():
            jobs.add_metric([row.label, state], value)
        slaves.add_metric([row.label, "idle"], row.slaves_idle)
        slaves.add_metric([row.label, "busy"], row.slaves_busy)
        if row.wait_seconds is not None:
            wait.add_metric(labels, row.wait_seconds.cumulative(), row.wait_seconds.total)
        if row.run_seconds is not None:
            run.add_metric(labels, row.run_seconds.cumulative(), row.run_seconds.total)
    yield from (submitted, finished, jobs, slaves, wait, run)

    events = CounterMetricFamily(
        "gloomd_job_events",
        "Daemon-wide job counters: the totals of the stats action.",
        labels=["event"],
    )
    for event, value in snap.totals.items():
        events.add_metric([event], value)
    yield events
    yield GaugeMetricFamily(
        "gloomd_waiting_jobs",
        "Jobs waiting for the jobs in their `after` (stats' waiting).",
        value=snap.waiting,
    )
    connections = GaugeMetricFamily(
        "gloomd_connections", "Open connections, by port.", labels=["port"]
    )
    for port, count in snap.connections.items():
        connections.add_metric([port], count)
    yield connections
    journal = HistogramMetricFamily(
        "gloomd_journal_commit_seconds", "Seconds per journal commit (group commit)."
    )
    if snap.journal_commit_seconds is not None:
        hist = snap.journal_commit_seconds
        journal.add_metric([], hist.cumulative(), hist.total)
    yield journal
    yield GaugeMetricFamily(
        "gloomd_uptime_seconds", "Seconds since the daemon started.", value=snap.uptime_s
    )
    build = GaugeMetricFamily(
        "gloomd_build_info",
        "Always 1; the labels say which gloomd this is.",
        labels=list(snap.build),
    )
    build.add_metric(list(snap.build.values()), 1)
    yield build


class SnapshotCollector(Collector):
    """A prometheus_client collector over one snapshot.

    It holds no reference to the broker, so rendering can run in a worker
    thread while the event loop goes on (see `render`).
    """

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return metric_families(self._snapshot)


def render(snapshot: MetricsSnapshot) -> bytes:
    """The exposition text of a snapshot: `generate_latest` over a registry of its own.

    Costs about 18 us per type (prometheus_client's formatting): 0.1 ms
    for a few types, 18 ms at the default cap of 1,000.
    """
    # auto_describe=False: registering does not call collect() a second time.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


def _outcome_order(finished: Mapping[str, int]) -> list[str]:
    known = [outcome for outcome in OUTCOMES if outcome in finished]
    return known + sorted(set(finished) - set(OUTCOMES))


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _add_counts(
    a: Mapping[str, int] | None, b: Mapping[str, int] | None
) -> Mapping[str, int] | None:
    if a is None or b is None:
        return None
    return {key: a.get(key, 0) + b.get(key, 0) for key in {**a, **b}}


def _add_hist(a: HistogramSnapshot | None, b: HistogramSnapshot | None) -> HistogramSnapshot | None:
    return None if a is None or b is None else a.plus(b)


def _float_text(value: float) -> str:
    """A bucket bound as Prometheus writes it (1.0, 0.005, ...)."""
    return repr(float(value))
