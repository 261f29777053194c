"""The journal's I/O: group commit in a thread, and the replies that wait for it.

The broker leaves its journal effects in `gloomd.durable.Durable` (which
ids changed) and `gloomd.holds.Holds` (which frames wait); this is the trio
side that turns them into commits, as the server's flush turns outboxes
into writes:

* `collect`, called by the server at each flush (once per pass of the
  loop, before any outbox is written): the pass's changes go into the batch
  being built, and the frames held in the pass are sealed to it.
* `run`, one task: whenever the batch is not empty and no commit runs, it
  takes the batch and commits it with `JournalStore.commit` in a worker
  thread (`trio.to_thread.run_sync`), so the loop serves every connection
  meanwhile and whatever arrives meanwhile goes into the next batch: one
  fsync for all of them (group commit).  When the commit returns, the
  frames held for it are written; if it failed, each held ack has become a
  `journal_error`, the batch's new jobs are taken back out of the broker
  (`Broker.take_back`), its other changes are written again with the next
  batch, and the daemon goes on (`event=journal_error`).
* With ``--sync off`` nothing is held, and the task commits what changed at
  least every `OFF_INTERVAL` seconds.
* `finish`, at shutdown: running detached jobs are journaled back to
  queued, the last batch is committed, and the broker lets go of the
  journal before it halts (detached jobs then stay in the journal).

Why a detached job is not handed to a slave before its record is committed
(its job frame is held like the ack): a crash can then never leave a job
that ran without the journal knowing it, and a failed commit can take the
job back cleanly, since no slave has seen it.  It costs that job one commit
of latency (2-5 ms with ``--sync full``) when a slave was idle; jobs
already committed (a backlog) are dispatched at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

import trio

from gloomwire.logformat import event

from .broker import Broker
from .durable import Durable
from .holds import Holds
from .journal import BatchBuilder, JournalStore, JournalWriteError, job_key
from .records import job_record
from .state import RUNNING, Peer

__all__ = ["OFF_INTERVAL", "JournalWriter"]

log = logging.getLogger("gloomd.journal")

#: With ``--sync off``: the longest a change waits before it is committed.
OFF_INTERVAL: Final = 0.05

Frame = bytes | dict[str, Any]


class JournalWriter:
    """Commits the broker's journal effects; see the module docstring."""

    def __init__(
        self,
        store: JournalStore,
        broker: Broker,
        write: Callable[[Peer, list[Frame]], None],
        flush: Callable[[], None],
    ) -> None:
        self.store = store
        self.broker = broker
        self._write = write
        self._flush = flush
        holds = Holds() if store.sync != "off" else None
        self.durable = Durable(holds, stats=store.stats, histogram=store.commit_histogram)
        self._builder = BatchBuilder()
        self._lot = trio.lowlevel.ParkingLot()
        self._lock = trio.Lock()
        self._interval = OFF_INTERVAL if holds is None else math.inf
        self.failures = 0
        #: A pass's changes could not be made into records (a bug): the batch
        #: being built is not committed, as if its write had failed.
        self._broken = False

    def attach(self) -> None:
        """From now on the broker's changes are journaled (after replay)."""
        self.broker.journal = self.durable
        self.broker.stores.dropped = self.durable.touched

    def collect(self) -> None:
        """The pass's changes into the batch, its held frames sealed (see module)."""
        durable = self.durable
        if durable:
            broker = self.broker
            try:
                durable.collect(
                    broker.jobs,
                    broker.stores,
                    broker.types,
                    self._builder,
                    time.time(),
                    trio.current_time(),
                )
            except Exception as exc:
                # The boundary of the journal (issue 18: nothing stops the
                # daemon): this batch fails whole, its acks say journal_error.
                event(log, "internal_error", logging.ERROR, stage="journal_records", exc_info=exc)
                self._broken = True
            self._lot.unpark()
        holds = durable.holds
        if holds is not None:
            holds.seal()

    def _due(self) -> bool:
        holds = self.durable.holds
        return bool(self._builder) or (holds is not None and bool(holds))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._due():
                with trio.move_on_after(self._interval):
                    await self._lot.park()
            async with self._lock:
                await self._commit()

    async def _commit(self) -> None:
        """Commit the batch built so far (the caller holds the lock)."""
        self.collect()
        if not self._due():
            return
        batch = self._builder.take()
        ticket = self.durable.close()
        failed, self._broken = self._broken, False
        try:
            if not failed:
                await trio.to_thread.run_sync(self.store.commit, batch)
        except JournalWriteError as exc:
            failed = True
            event(log, "journal_error", logging.ERROR, rows=len(batch), error=exc.reason)
        except Exception as exc:
            failed = True
            event(
                log, "internal_error", logging.ERROR, stage="journal_commit", rows=len(batch),
                exc_info=exc,
            )  # fmt: skip
        if failed:
            self.failures += 1
        self.collect()  # what this pass held waits for the next ticket
        broker = self.broker
        if failed:
            broker.take_back(self.durable.failed(ticket))
        else:
            self.durable.committed(ticket)
        holds = self.durable.holds
        if holds is not None:
            for peer, frames in holds.release(ticket.number, failed):
                self._write(peer, frames)
        self._flush()

    async def finish(self) -> None:
        """At shutdown: running detached jobs journaled back to queued, the last
        batch committed; the broker then no longer journals (see `Broker.halt`)."""
        async with self._lock:
            self.collect()
            broker = self.broker
            wall, mono = time.time(), trio.current_time()
            for job in broker.jobs.values():
                if job.detached and job.state == RUNNING:
                    self._builder.put(job_key(job.id), *job_record(job, wall, mono, "queued"))
            await self._commit()
            broker.journal = None
            broker.stores.dropped = None
