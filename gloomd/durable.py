"""The journal as effects of the broker: which jobs changed, and their records.

The broker stays a pure state machine (STYLE.md, "Effects as data"): when a
detached job changes state it adds the job's id to `Durable.touched`, as it
adds frames to outboxes; a pause or resume adds the type to `types`.  Once
per pass of the event loop the I/O layer calls `collect`, which reads each
touched id's state *now* and folds its last word into the batch being
built: the job's record (`gloomd.records`), its kept result, or the row's
deletion.  So a job submitted, run and answered within one pass costs one
row (its result), and the order of a pass's changes cannot be got wrong.

Which ids: every transition of a detached job (accepted, delayed, waiting,
queued, running, dead, finished, removed) touches it, and so does a job
gaining a dependent (its record lists them) and a kept result expiring or
dropped past the cap (`gloomd.stores` adds those ids itself).  Touching an
id too often costs a row written, never a wrong row.

`fresh` holds the detached jobs whose submit is not yet committed: their
acks are held (`gloomd.holds`), and so is the job frame if one is handed to
a slave meanwhile.  `close` hands over what the open batch changed, for
the I/O layer to give back to the broker if the commit fails.  Pure: no
trio, no SQLite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gloomwire import codec

from .holds import Holds
from .journal import BatchBuilder, CommitHistogram, job_key
from .records import RESULT, job_record, result_record, type_of_key
from .state import Job, JobId, TypeQueue
from .stores import Stores

__all__ = ["Durable", "Ticket"]


@dataclass(slots=True)
class Ticket:
    """What one batch changed: for a failed commit, what to give back or write again."""

    number: int
    ids: set[JobId] = field(default_factory=set)
    types: dict[bytes | str, Any] = field(default_factory=dict)
    new: list[Job] = field(default_factory=list)


class Durable:
    """The broker's journal effects (see the module docstring).

    `holds` is None with ``--sync off``: acks do not wait, and nothing is
    fresh.  `stats` answers the ``journal`` object of ``stats``, `histogram`
    the commit times of /metrics (both the store's, read at request time).
    """

    __slots__ = ("_open", "fresh", "histogram", "holds", "stats", "touched", "types")

    def __init__(
        self,
        holds: Holds | None,
        stats: Callable[[], Any] | None = None,
        histogram: Callable[[], CommitHistogram] | None = None,
    ) -> None:
        self.touched: set[JobId] = set()
        self.types: dict[bytes | str, Any] = {}
        self.holds = holds
        self.fresh: set[Job] | None = None if holds is None else set()
        self.stats = stats
        #: Commit seconds (bounds, counts, total), for gloomd_journal_commit_seconds.
        self.histogram = histogram
        self._open = Ticket(holds.ticket if holds is not None else 0)

    def accepted(self, job: Job) -> None:
        """A detached job was accepted: touched, and fresh until committed."""
        self.touched.add(job.id)
        fresh = self.fresh
        if fresh is not None:
            fresh.add(job)
            self._open.new.append(job)

    def __bool__(self) -> bool:
        return bool(self.touched or self.types)

    def collect(
        self,
        jobs: dict[JobId, Job],
        stores: Stores,
        queues: dict[bytes | str, TypeQueue],
        builder: BatchBuilder,
        wall: float,
        mono: float,
    ) -> None:
        """Fold this pass's changes into `builder`, reading the broker's state now
        (its `jobs`, `stores` and `types`)."""
        touched = self.touched
        if touched:
            results = stores.results
            outcomes = stores.outcomes
            for job_id in touched:
                key = job_key(job_id)
                job = jobs.get(job_id)
                if job is not None and job.detached:
                    builder.put(key, *job_record(job, wall, mono))
                    continue
                # No detached job holds the id: the row is its kept result's, if
                # any.  An attached job may hold the id meanwhile (it is not
                # durable), beside the result kept in memory for --result-ttl.
                stored = results.get(job_id)
                if stored is None:
                    builder.delete(key)
                else:
                    outcome = outcomes.get(job_id)
                    ok = outcome is not None and outcome[1]
                    builder.put(key, RESULT, result_record(job_id, stored, ok, wall, mono))
            self._open.ids |= touched
            touched.clear()
        types = self.types
        if types:
            for name, job_type in types.items():
                queue = queues.get(name)
                if queue is not None and queue.paused:
                    builder.pause(type_of_key(name), codec.dumps(job_type))
                else:
                    builder.resume(type_of_key(name))
            self._open.types.update(types)
            types.clear()

    def close(self) -> Ticket:
        """The open batch goes to the store: what it changed; the next one opens."""
        ticket = self._open
        holds = self.holds
        if holds is not None:
            ticket.number = holds.close()
        self._open = Ticket(holds.ticket if holds is not None else 0)
        return ticket

    def committed(self, ticket: Ticket) -> None:
        """The batch is stored: its jobs are fresh no more."""
        fresh = self.fresh
        if fresh is not None:
            fresh.difference_update(ticket.new)

    def failed(self, ticket: Ticket) -> list[Job]:
        """The batch was not stored: its changes are written again with the next
        one, and its new jobs (fresh, their acks held) go back to the broker."""
        self.touched |= ticket.ids
        for key, job_type in ticket.types.items():
            self.types.setdefault(key, job_type)
        fresh = self.fresh
        if fresh is None:
            return []
        fresh.difference_update(ticket.new)
        return ticket.new
