"""Replay: a fresh broker rebuilt from the journal, before the daemon listens.

`decode` reads the store's snapshot into records (a bad row is a start-up
error: `JournalError`, exit 2); `restore` puts every job back where it was,
through the broker's own transitions (`gloomd.flow`), so the rules that
ran the jobs rebuild them:

* queued jobs by their `seq`, so the dispatch order is the one they had;
* running jobs back to the queue with their own `seq` (ahead of every later
  job of their priority) as one loss of their slave: `attempt` already
  counts the delivery that was cut short, so the next one says attempt + 1,
  and past `--max-retries` losses the job fails with CRASH (a dead letter);
* delayed jobs (a `delay` or a retry's back-off) until the same wall-clock
  moment, in the order they were delayed;
* waiting jobs linked again to the jobs in their `after` (the parents'
  records list their dependents); one that waited on a job the journal does
  not hold (an attached job, gone with its master's connection) fails with
  DEPENDENCY, as it would have when that job was withdrawn;
* dead letters in the order they died (a kick by type takes the oldest);
* kept results with their wall-clock expiry (an expired one is dropped, and
  its row deleted by the first commit);
* pause flags.

Ids restored are live: a new submit of one gets `id_exists` (or attaches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gloomwire import codec

from .journal import JournalError, Snapshot, job_id_of
from .records import ResultRecord, decode, type_key
from .state import DEAD, DELAYED, GONE, QUEUED, RUNNING, STATE_ALIVE, WAITING, Job, JobId
from .stores import STORE_ENTRY_BYTES

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["Restored", "decode_snapshot", "restore"]


@dataclass(slots=True)
class Restored:
    """The journal's content, decoded (not yet in a broker)."""

    jobs: list[Job] = field(default_factory=list)
    results: list[ResultRecord] = field(default_factory=list)
    paused: list[Any] = field(default_factory=list)


def decode_snapshot(path: str, snapshot: Snapshot) -> Restored:
    """Every row decoded; a row that is not a record raises JournalError."""
    restored = Restored()
    for key, state, record in snapshot.jobs:
        try:
            item = decode(state, record)
            key_id = job_id_of(key)
            if key_id != item.id or type(key_id) is not type(item.id):
                raise ValueError("the record's id is not its key's")
        except ValueError as exc:
            raise JournalError(path, f"bad record for key {key[:40]!r}: {exc}") from None
        if isinstance(item, ResultRecord):
            restored.results.append(item)
        else:
            restored.jobs.append(item)
    for key, record in snapshot.paused.items():
        try:
            restored.paused.append(codec.loads(record))
        except Exception:
            raise JournalError(path, f"bad pause record for type {key[:40]!r}") from None
    return restored


def restore(flow: Flow, restored: Restored, wall: float, mono: float) -> dict[str, Any]:
    """Put the journal's jobs, results and pause flags into `flow` (a fresh broker).

    Jobs whose state changed on the way (running ones requeued or failed,
    waiting ones failed, expired results) are touched, so the first commit
    writes them; the others are in the journal as they are.  Returns the
    counts of the `event=restore` line.
    """
    started = time.perf_counter()
    journal = flow.journal
    flow.journal = None  # what is restored is in the journal already
    counts: dict[str, Any] = dict.fromkeys(("queued", "delayed", "waiting", "dead", "requeued"), 0)
    changed: list[JobId] = []
    restored_jobs = restored.jobs
    jobs: dict[JobId, Job] = flow.jobs
    for job in restored_jobs:
        jobs[job.id] = job
        job.ready_at = mono + (job.ready_at - wall) if job.ready_at else 0.0
    # Waiting jobs' links: each parent's record lists its waiting dependents
    # (ids, as decoded; links to jobs from here on).
    states = {job.id: job.state for job in restored_jobs}
    links: dict[JobId, int] = {}
    for job in restored_jobs:
        ids: Any = job.dependents
        if ids:
            found = [jobs[d] for d in ids if states.get(d) == WAITING]
            job.dependents = found or None
            for dependent in found:
                links[dependent.id] = links.get(dependent.id, 0) + 1
    limits = flow.limits
    totals = flow.totals
    # Orders go on from the journal's: a record not rewritten keeps its seq and
    # mark, so those given from now on must come after every one of them.
    flow._seq = max([flow._seq, *(job.seq for job in restored_jobs)])
    flow._marks = max([flow._marks, *(job.mark for job in restored_jobs)])
    later: list[Job] = []  # queued and running ones, by seq below
    # The others by the order they entered their state.  Entering it again
    # gives each a new mark (after the journal's): touched, so that the first
    # commit writes every one, or a record rewritten later would carry a mark
    # of the new numbering beside the old ones and change places at the next
    # replay (the delayed, waiting and dead orders).
    for job in sorted(restored_jobs, key=lambda j: j.mark):
        queue = flow._queue_for(job.type, job.key)
        tally = job.tally = queue.tally
        tally.submitted += 1
        totals["submitted"] += 1
        state = job.state
        if state == QUEUED or state == RUNNING:
            later.append(job)
            continue
        changed.append(job.id)
        if state == DEAD:
            flow._enter(job, queue, DEAD)
            flow._dead.entries.append((job.mark, job))
            totals["failed"] += 1
            counts["dead"] += 1
        elif state == DELAYED:
            flow._delay(job, queue, job.ready_at)
            counts["delayed"] += 1
        else:  # WAITING
            linked = links.get(job.id, 0)
            if linked < job.waiting:
                job.state = GONE  # in no queue yet
                flow._fail_job(job, "DEPENDENCY", mono)
                counts["dead"] += 1
            else:
                job.waiting = linked
                flow._enter(job, queue, WAITING)
                counts["waiting"] += 1
    later.sort(key=lambda j: j.seq)
    for job in later:
        queue = flow.types[job.key]
        if job.state == RUNNING:
            changed.append(job.id)
            job.losses += 1
            if job.losses > limits.max_retries:
                job.state = GONE
                flow._fail_job(job, "CRASH", mono)
                counts["dead"] += 1
                continue
            totals["requeued"] += 1
            counts["requeued"] += 1
        flow._enqueue(job, queue, mono)
        counts["queued"] += 1
    dead = flow._dead
    dead.entries.sort(key=lambda entry: entry[0])
    dead.compact(STATE_ALIVE[DEAD])
    counts["results"] = _results(flow, restored.results, wall, mono, changed)
    for job_type in restored.paused:
        flow._queue_for(job_type, type_key(job_type)).paused = True
    flow.journal = journal
    if journal is not None:
        journal.touched.update(changed)
    counts["seconds"] = round(time.perf_counter() - started, 3)
    return counts


def _results(
    flow: Flow, results: list[ResultRecord], wall: float, mono: float, changed: list[JobId]
) -> int:
    stores = flow.stores
    kept = 0
    for rec in sorted(results, key=lambda r: r.expires):
        if rec.expires <= wall or rec.id in flow.jobs:
            changed.append(rec.id)  # expired while stopped: its row goes
            continue
        expires = mono + (rec.expires - wall)
        stores.results[rec.id] = (expires, rec.final, rec.key)
        stores.result_bytes += len(rec.final) + STORE_ENTRY_BYTES
        stores.outcomes[rec.id] = (expires, rec.ok)
        stores.outcome_bytes += STORE_ENTRY_BYTES
        flow._arm(expires)
        kept += 1
    return kept
