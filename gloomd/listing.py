"""`jobs`: a page of the jobs the broker holds, in a stable order, with a cursor.

Order: by state section (queued, delayed, waiting, running, dead), then by
type (the order types were first seen), then within the type: queued jobs in
exact dispatch order (priority, then seq), delayed, waiting and dead jobs in
the order they entered that state, running jobs by seq.  A filter on type or
state picks sections and types; the order stays the same.

Bounded work per call, whatever the number of jobs: queued jobs are read
from their type's lanes (`gloomd.state.TypeQueue`, a log per priority kept in
seq order), so a page starts with a binary search and costs its rows, never
a sort or a scan of the heap; the other states have logs of their own.
Stale entries (jobs that moved on) are skipped, and a call examines at most
`limit + SCAN_BUDGET` entries and types: past that it returns the rows it
has (perhaps none) and a cursor to go on from, so a page can be short while
`next` is not null; `next` is null only at the end.

The cursor is `[section, type serial, key, key]`, four integers: opaque to
clients, meaningful only to this module.  A cursor that does not fit the
request (another state filter) is `invalid_type` / "cursor".
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from operator import attrgetter
from typing import Any, Final

from gloomwire.vocabulary import error, job_row, jobs_page

from . import messages as m
from .state import (
    DEAD,
    DELAYED,
    QUEUED,
    RUNNING,
    STATE_ALIVE,
    STATE_NAMES,
    WAITING,
    Job,
    SlavePeer,
    TypeQueue,
    queued_alive,
)

__all__ = ["SCAN_BUDGET", "SECTIONS", "page"]

#: States in listing order.
SECTIONS: Final = (QUEUED, DELAYED, WAITING, RUNNING, DEAD)
_SECTION_OF: Final = {STATE_NAMES[state]: index for index, state in enumerate(SECTIONS)}
#: Entries and types a call may examine beyond the rows it returns.
SCAN_BUDGET: Final = 4096
#: A key past every real one: "this type is done, go on with the next".
_END: Final = 2**63 - 1

_serial = attrgetter("serial")


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


def page(
    types: dict[bytes | str, TypeQueue],
    slaves: Iterable[SlavePeer],
    msg: m.Jobs,
    wall_now: float,
) -> dict[str, Any]:
    """The answer to `msg`: `{"ok":true,"jobs":[...],"next":C}`, or an error frame."""
    if msg.state is None:
        sections = range(len(SECTIONS))
    else:
        only = _SECTION_OF[msg.state]
        sections = range(only, only + 1)
    start: tuple[int, int, int, int] | None = None
    if msg.cursor is not None:
        cursor = msg.cursor
        if len(cursor) != 4 or cursor[0] not in sections:
            return error("invalid_type", "cursor")
        start = (cursor[0], cursor[1], cursor[2], cursor[3])
    if msg.key is not None:
        queue = types.get(msg.key)
        queues = [] if queue is None else [queue]
    else:
        queues = list(types.values())  # ascending serials: the dict's own order
    rows: list[dict[str, Any]] = []
    budget = _Budget(msg.limit + SCAN_BUDGET)
    running: dict[TypeQueue, list[Job]] | None = None
    for section in sections:
        if start is not None and section < start[0]:
            continue
        state = SECTIONS[section]
        resume = start is not None and section == start[0]
        first = bisect_left(queues, start[1], key=_serial) if resume and start else 0
        if state == RUNNING and running is None:
            running = _running(slaves, msg.key)
        for queue in queues[first:]:
            keys = (start[2], start[3]) if resume and start and queue.serial == start[1] else None
            for keys_now, job in _entries(queue, state, keys, running):
                budget.left -= 1
                if job is not None:
                    rows.append(_row(job, state, wall_now))
                    if len(rows) == msg.limit:
                        return jobs_page(rows, [section, queue.serial, *keys_now])
                if budget.left <= 0:
                    return jobs_page(rows, [section, queue.serial, *keys_now])
            budget.left -= 1
            if budget.left <= 0:
                return jobs_page(rows, [section, queue.serial, _END, _END])
    return jobs_page(rows, None)


def _row(job: Job, state: int, wall_now: float) -> dict[str, Any]:
    return job_row(
        job.id,
        job.type,
        job.priority,
        STATE_NAMES[state],
        job.attempt,
        round(max(0.0, wall_now - job.accepted), 3),
        job.detached,
    )


def _entries(
    queue: TypeQueue,
    state: int,
    after: tuple[int, int] | None,
    running: dict[TypeQueue, list[Job]] | None,
) -> Iterator[tuple[tuple[int, int], Job | None]]:
    """(keys, job or None for a stale entry) after `after`, in listing order."""
    if state == QUEUED:
        yield from _queued(queue, after)
    elif state == RUNNING:
        assert running is not None
        seq_after = -1 if after is None else after[0]
        for job in running.get(queue, ()):
            if job.seq > seq_after:
                yield (job.seq, 0), job
    else:
        log = queue.logs.get(state)
        if log is None:
            return
        alive = STATE_ALIVE[state]
        entries = log.entries
        for index in range(log.after(None if after is None else after[0]), len(entries)):
            entry = entries[index]
            yield (entry[0], 0), (entry[1] if alive(entry) else None)


def _queued(
    queue: TypeQueue, after: tuple[int, int] | None
) -> Iterator[tuple[tuple[int, int], Job | None]]:
    prios = queue.prios
    lanes = queue.lanes
    for prio in prios[bisect_left(prios, after[0]) if after else 0 :]:
        lane = lanes[prio]
        entries = lane.entries
        begin = lane.after(after[1] if after and prio == after[0] else None)
        for index in range(begin, len(entries)):
            entry = entries[index]
            yield (prio, entry[1]), (entry[2] if queued_alive(entry) else None)


def _running(slaves: Iterable[SlavePeer], key: bytes | str | None) -> dict[TypeQueue, list[Job]]:
    """Running jobs by queue, each list by seq: one pass over the slaves (at
    most the connection cap), since a running job is on exactly one of them."""
    by_queue: dict[TypeQueue, list[Job]] = {}
    for slave in slaves:
        job = slave.job
        queue = slave.queue
        if job is None or queue is None or job.state != RUNNING:
            continue
        if key is not None and queue.key != key:
            continue
        by_queue.setdefault(queue, []).append(job)
    for jobs in by_queue.values():
        jobs.sort(key=attrgetter("seq"))
    return by_queue
