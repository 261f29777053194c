"""The broker: messages in, the master actions, stats and shutdown, over `gloomd.flow`.

`Broker` is `gloomd.flow.Flow` (the state and the transitions of a job: read
its docstring for the rules) plus what a master may ask besides a submit:
cancel, result, stats, and the job lifecycle's kick, delete, jobs, pause and
resume (durability-and-operations.md section 2, lifecycle.md), and the
daemon's shutdown (`halt`).  Each connection's `gloomd.ingest.Ingest` hands
it typed messages (`slave_message`, `master_message`); replies land in
peers' outboxes.  No sockets, no clock of its own, no parsing.

A kick by type of many dead jobs is bounded work per pass of the event
loop: `KICK_CHUNK` jobs now, then a chunk per `tick`, the timer coming back
at once while one is under way.  The master that asked is answered when it
is done, with how many were kicked; what it sends meanwhile waits behind
the kick (`MasterPeer.held`, fed by the ingest), so that every master is
answered in request order.  A kick of 100,000 dead jobs so never holds
other connections up for more than one chunk (figures in
benchmarks/README.md).  In-process masters (the HTTP admin API) need an
answer at once and get the whole kick in one pass.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from gloomwire.framing import encode_frame
from gloomwire.logformat import event
from gloomwire.vocabulary import OK_FRAME, ack, error, job_failed, kicked
from gloomwire.vocabulary import stats as stats_frame

from . import listing
from . import messages as m
from .attach import drop_listener, has_listener, listeners
from .counters import CANCELLED, HALTED
from .flow import INF, TICK_BUDGET, BrokerLimits, Flow, log
from .state import (
    DEAD,
    DELAYED,
    GONE,
    QUEUED,
    RUNNING,
    STATE_ALIVE,
    STATE_NAMES,
    WAITING,
    Job,
    JobId,
    JobLog,
    MasterPeer,
    Peer,
    SlavePeer,
    TypeQueue,
)
from .stores import STORE_ENTRY_BYTES

__all__ = [
    "DEAD",
    "DELAYED",
    "GONE",
    "KICK_CHUNK",
    "OK_FRAME",
    "QUEUED",
    "RUNNING",
    "STORE_ENTRY_BYTES",
    "TICK_BUDGET",
    "WAITING",
    "Broker",
    "BrokerLimits",
    "Job",
    "MasterPeer",
    "Peer",
    "SlavePeer",
    "TypeQueue",
    "iter_frames",
]

_EVERY_TYPE: Final = m.Stats()  # the stats request without a type
#: Dead jobs one pass of a kick by type puts back (about 1 ms of the loop:
#: benchmarks/lifecycle.py).
KICK_CHUNK: Final = 1000


class _KickWork:
    """A kick by type under way: the `limit` oldest dead jobs of `queue` that
    were dead when it was asked for (marks up to `boundary`)."""

    __slots__ = ("boundary", "done", "limit", "master", "queue")

    def __init__(self, master: MasterPeer, queue: TypeQueue, limit: int, boundary: int) -> None:
        self.master: MasterPeer | None = master
        self.queue = queue
        self.limit = limit
        self.boundary = boundary
        self.done = 0


class Broker(Flow):
    """The broker a server runs: `Flow` plus messages in and the master actions."""

    def __init__(
        self,
        limits: BrokerLimits | None = None,
        clock: Callable[[], float] | None = None,
        max_outbox: int = 64 * 1024 * 1024,
        wall: Callable[[], float] = time.time,
    ) -> None:
        # `Flow`'s parameters spelled out: compiled by mypyc, `*args, **kwargs`
        # passed on to a native base class arrive as one tuple.
        super().__init__(limits, clock, max_outbox, wall)
        # Kicks by type under way, one chunk per pass, oldest first.
        self._work: deque[_KickWork] = deque()

    def disconnect(self, peer: Peer) -> None:
        """The peer's connection is gone, for whatever reason."""
        self.dirty.pop(peer, None)
        peer.outbox = []
        peer.pending = 0
        if peer.logs.suppressed:
            event(log, "log_suppressed", peer=peer.name, lines=peer.logs.suppressed)
        if isinstance(peer, SlavePeer):
            self._drop_slave(peer)
        elif isinstance(peer, MasterPeer):
            self._drop_master(peer)

    def slave_message(self, slave: SlavePeer, msg: m.SlaveRequest) -> None:
        """Handle one validated request of a slave; replies land in outboxes."""
        cls = type(msg)
        if cls is m.Respond:
            self._respond(slave, msg.body)  # type: ignore[union-attr]
        elif cls is m.Progress:
            self._progress(slave, msg.body)  # type: ignore[union-attr]
        elif cls is m.Join:
            self._join(slave, msg)  # type: ignore[arg-type]
        elif cls is m.Fail:
            self._fail(slave, msg)  # type: ignore[arg-type]
        else:
            raise TypeError(f"not a slave request: {cls.__name__}")

    def master_message(self, master: MasterPeer, msg: m.MasterRequest) -> None:
        """Handle one validated request of a master; replies land in outboxes."""
        cls = type(msg)
        if cls is m.Submit:
            self.submit(master, msg)  # type: ignore[arg-type]
        elif cls is m.Cancel:
            self._cancel(master, msg.id, delete=False)  # type: ignore[union-attr]
        elif cls is m.Result:
            self._result(master, msg.id)  # type: ignore[union-attr]
        elif cls is m.Stats:
            # Encoded now: a stats answer can be a megabyte (see `send`).
            self.send(master, encode_frame(stats_frame(self.stats(msg))))  # type: ignore[arg-type]
        elif cls is m.Jobs:
            page = listing.page(self.types, self.slaves, msg, self._wall())  # type: ignore[arg-type]
            self.send(master, encode_frame(page) if page.get("ok") else page)
        elif cls is m.Kick:
            self._kick(master, msg.id)  # type: ignore[union-attr]
        elif cls is m.KickType:
            self._kick_type(master, msg)  # type: ignore[arg-type]
        elif cls is m.Delete:
            self._cancel(master, msg.id, delete=True)  # type: ignore[union-attr]
        elif cls is m.Pause:
            self._pause(master, msg)  # type: ignore[arg-type]
        elif cls is m.Resume:
            self._resume(master, msg)  # type: ignore[arg-type]
        else:
            raise TypeError(f"not a master request: {cls.__name__}")

    def hold(
        self, master: MasterPeer, item: m.MasterRequest | bytes | dict[str, Any], size: int
    ) -> None:
        """Keep `item` (a request, or the frame already owed for one) until the
        request `master` is waiting on is done (see `MasterPeer.held`).

        Held requests are weighed against the output cap: a master that sends
        more than `max_outbox` bytes while it waits is dropped, as one that
        does not read its answers is.
        """
        held = master.held
        assert held is not None
        held.append(item)
        master.held_bytes += size
        if master.held_bytes > self._max_outbox:
            master.overflowed = True
            self.dirty[master] = None

    def _cancel(self, master: MasterPeer, job_id: JobId, *, delete: bool) -> None:
        """`cancel`, and `delete`, which is cancel plus the removal of dead letters."""
        job = self.jobs.get(job_id)
        if job is None or not (job.detached or has_listener(job, master)):
            self.send(master, error("unknown_id", job_id))
            return
        state = job.state
        if state == RUNNING or (state == DEAD and not delete):
            self.send(master, error("invalid_state", STATE_NAMES[state]))
            return
        if job.detached:
            self.hold_reply(master, job_id)  # the journal must forget it first
        self.send(master, ack(job_id))
        if delete and self._may_log(master):
            event(log, "delete", master=master.name, id=job_id, type=job.type,
                  state=STATE_NAMES[state])  # fmt: skip
        if state == DEAD:
            self._drop_dead(job)
            return
        self.totals["cancelled"] += 1
        job.tally.finished[CANCELLED] += 1
        if has_listener(job, master):
            # The canceller is one of its masters: the ack is its answer.
            del master.jobs[job_id]
            drop_listener(job, master)
        frame = job_failed(job_id, "CANCELLED")
        if job.retries is not None:
            frame["attempt"] = job.attempt
        self._remove(job, frame, self._clock())

    def _result(self, master: MasterPeer, job_id: JobId) -> None:
        stored = self.stores.results.get(job_id)
        if stored is not None:
            self.send(master, stored[1])
            return
        job = self.jobs.get(job_id)
        if job is not None and (job.detached or has_listener(job, master)):
            if job.state == DEAD:
                assert job.final is not None
                self.send(master, job.final)
            else:
                self.send(master, error("not_ready", job_id))
        else:
            self.send(master, error("unknown_id", job_id))

    def _kick(self, master: MasterPeer, job_id: JobId) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            self.send(master, error("unknown_id", job_id))
            return
        if job.state != DEAD:
            self.send(master, error("invalid_state", STATE_NAMES[job.state]))
            return
        if self._may_log(master):
            event(log, "kick", master=master.name, id=job_id, type=job.type)
        self._revive(job, self._clock())
        self.hold_reply(master, job_id)
        self.send(master, ack(job_id))

    def _kick_type(self, master: MasterPeer, msg: m.KickType) -> None:
        queue = self.types.get(msg.key)
        dead = 0 if queue is None else queue.dead
        limit = dead if msg.limit is None else min(msg.limit, dead)
        if self._may_log(master):
            event(log, "kick", master=master.name, type=msg.type, jobs=limit)
        if queue is None or not limit:
            self.send(master, kicked(0))
            return
        work = _KickWork(master, queue, limit, self._marks)
        # An in-process master (the HTTP admin API) needs its answer at once.
        chunk = limit if master in self.internal else KICK_CHUNK
        if self._kick_some(work, chunk, self._clock()):
            self.hold_reply(master, msg.type)
            self.send(master, kicked(work.done))
            return
        master.held = []
        master.held_bytes = 0
        self._work.append(work)
        self._arm(-INF)

    def _kick_some(self, work: _KickWork, budget: int, now: float) -> bool:
        """Kick up to `budget` more jobs of `work`; True when it is complete."""
        queue = work.queue
        if self.types.get(queue.key) is not queue:
            return True  # emptied and forgotten meanwhile: nothing dead is left in it
        dead_log = queue.logs.get(DEAD)
        if dead_log is None:
            return True
        alive = STATE_ALIVE[DEAD]
        while budget > 0 and work.done < work.limit:
            dead_log.trim(alive)
            if dead_log.head >= len(dead_log.entries):
                return True
            mark, job = dead_log.entries[dead_log.head]
            if mark > work.boundary:
                return True  # died after the kick was asked for
            self._revive(job, now)
            work.done += 1
            budget -= 1
        return work.done >= work.limit

    def _finish_work(self, work: _KickWork) -> None:
        master = work.master
        if master is not None:
            self.hold_reply(master, work.queue.type)
            self.send(master, kicked(work.done))
            self._release(master)

    def _release(self, master: MasterPeer) -> None:
        """Handle the requests `master` sent while it waited, in order."""
        held = master.held
        master.held = None
        master.held_bytes = 0
        if not held:
            return
        for index, item in enumerate(held):
            again = _held(master)
            if again is not None:
                again.extend(held[index:])  # waiting again: the rest stays behind
                return
            if isinstance(item, bytes | dict):
                self.send(master, item)
            else:
                self.master_message(master, item)

    def _pause(self, master: MasterPeer, msg: m.Pause) -> None:
        queue = self._queue_for(msg.type, msg.key)
        if not queue.paused and self._may_log(master):
            event(log, "pause", master=master.name, type=msg.type)
        queue.paused = True
        self._journal_type(master, queue)
        self.send(master, OK_FRAME)

    def _resume(self, master: MasterPeer, msg: m.Resume) -> None:
        """Resume a paused type: its best jobs go to its longest-idle slaves."""
        queue = self.types.get(msg.key)
        if queue is not None and queue.paused:
            if self._may_log(master):
                event(log, "resume", master=master.name, type=msg.type)
            queue.paused = False
            now = self._clock()
            while queue.idle and queue.queued:
                slave, _ = queue.idle.popitem(last=False)
                self.idle_total -= 1
                self._slave_ready(slave, now)
            self._journal_type(master, queue)
            self._forget_if_empty(queue)
        self.send(master, OK_FRAME)

    def _journal_type(self, master: MasterPeer, queue: TypeQueue) -> None:
        """A pause flag changed: journaled, and its ok waits for the commit."""
        journal = self.journal
        if journal is not None:
            journal.types[queue.key] = queue.type
            self.hold_reply(master, queue.type)

    def take_back(self, jobs: list[Job]) -> None:
        """The journal's commit holding these new detached jobs failed: their
        acks become `journal_error` (`gloomd.holds`), so they are removed as
        if never accepted (counted withdrawn).  None has run: a fresh job's
        frame to a slave is held too, and dropped with the commit."""
        holders = {id(slave.job): slave for slave in self.slaves if slave.job is not None}
        for job in jobs:
            if self.jobs.get(job.id) is not job:
                continue  # gone meanwhile (cancelled, deleted, timed out)
            queue = self.types[job.key]
            if job.state == RUNNING:
                slave = holders.get(id(job))
                job.state = GONE
                queue.running -= 1
                if slave is not None:
                    slave.job = None
                    self._slave_ready(slave)
                self.totals["withdrawn"] += 1
            else:
                if job.state != DEAD:  # a dead one (DEPENDENCY at once) counted failed
                    self.totals["withdrawn"] += 1
                self._take_out(job)
            del self.jobs[job.id]
            frame = error("journal_error", job.id)
            for listener in listeners(job):
                listener.jobs.pop(job.id, None)
                if listener is not job.master:  # the first one's ack says it
                    self.send(listener, frame)
            job.master = job.others = None
            self._forget_if_empty(queue)

    def _drop_master(self, master: MasterPeer) -> None:
        self.masters.discard(master)
        self.internal.discard(master)
        if master.held is not None:
            master.held = None
            for work in self._work:
                if work.master is master:
                    work.master = None  # the kick goes on; nobody is left to tell
        self._withdraw(master)

    # ------------------------------------------------------------ time

    def next_deadline(self) -> float:
        """As `Flow.next_deadline`, and at once while a kick by type is under way."""
        deadline = super().next_deadline()
        if self._work:
            deadline = self._timer_at = -INF
        return deadline

    def tick(self, now: float) -> None:
        """Fire what is due (`Flow.tick`), then kick one more chunk of the oldest kick under way."""
        super().tick(now)
        if self._work:
            work = self._work[0]
            if self._kick_some(work, KICK_CHUNK, now):
                self._work.popleft()
                self._finish_work(work)

    # ------------------------------------------------------------ shutdown & stats

    def halt(self, keep_detached: bool = False) -> int:
        """The daemon is stopping: answer every unanswered job with HALTED.

        `keep_detached` (a journal keeps them for the next start): detached
        jobs are not failed, nor counted; the caller has journaled them.

        Kicks under way are answered with what they did, and the requests
        held behind them handled.  Queues are emptied so no slave gets new
        work, running jobs become orphans (a late respond is acked and
        dropped), and later submits are refused the same way.  Returns how
        many jobs were failed.
        """
        self.halted = True
        while self._work:
            self._finish_work(self._work.popleft())
        count = 0
        for job in list(self.jobs.values()):
            if job.state == DEAD or (keep_detached and job.detached):
                continue
            if job.master is not None:
                frame = job_failed(job.id, "HALTED")
                if job.retries is not None:
                    frame["attempt"] = job.attempt
                self._tell_masters(job, frame)
                count += 1
            self.totals["failed"] += 1
            job.tally.finished[HALTED] += 1
        for job in self.jobs.values():
            job.state = GONE
            job.master = job.others = None
        self.jobs.clear()
        for master in [*self.masters, *self.internal]:
            master.jobs.clear()
        for queue in self.types.values():
            queue.heap.clear()
            queue.queued = queue.running = queue.delayed = queue.waiting = queue.dead = 0
            queue.lanes.clear()
            queue.prios.clear()
            queue.lane_entries = 0
            queue.logs.clear()
        self._dead = JobLog(0)
        self.queued_total = self.waiting_total = self.delayed_total = self.dead_total = 0
        return count

    def stats(self, request: m.Stats = _EVERY_TYPE) -> dict[str, Any]:
        """The stats answer: a row per type, at most `max_stats_types` of them.

        Past the cap, the first rows (oldest types first) are listed and the
        others summed in `types_omitted`, from running sums, so the answer
        costs its rows whatever the number of types; `{"action":"stats",
        "type":T}` asks for one type's row (none if T has no queue).
        """
        queues = self.types
        omitted: dict[str, int] | None = None
        row = self._row
        if request.key is not None:
            queue = queues.get(request.key)
            rows = [] if queue is None else [row(queue)]
        elif len(queues) <= self.limits.max_stats_types:
            rows = [row(q) for q in queues.values()]
        else:
            rows = [row(q) for q in itertools.islice(queues.values(), self.limits.max_stats_types)]
            omitted = {
                "types": len(queues) - len(rows),
                "queued": self.queued_total - self.waiting_total - self.delayed_total,
                "running": len(self.jobs) - self.queued_total - self.dead_total,
                "slaves": self.joined,
                "idle": self.idle_total,
                "delayed": self.delayed_total,
                "waiting": self.waiting_total,
                "dead": self.dead_total,
            }
            for shown in rows:
                for name in ("queued", "running", "slaves", "idle", "delayed", "waiting", "dead"):
                    omitted[name] -= shown[name]
        answer: dict[str, Any] = {"types": rows}
        if omitted is not None:
            answer["types_omitted"] = omitted
        answer["totals"] = dict(self.totals)
        answer["waiting"] = self.waiting_total
        answer["connections"] = {"masters": len(self.masters), "slaves": len(self.slaves)}
        answer["uptime_s"] = round(self._clock() - self.started, 3)
        journal = self.journal
        answer["journal"] = (
            journal.stats() if journal is not None and journal.stats is not None else None
        )
        return answer

    def _row(self, queue: TypeQueue) -> dict[str, Any]:
        tally = queue.tally
        own = self.tallies.own(tally)
        return {
            "type": queue.type,
            "queued": queue.queued,
            "running": queue.running,
            "slaves": queue.slaves,
            "idle": len(queue.idle),
            "delayed": queue.delayed,
            "waiting": queue.waiting,
            "dead": queue.dead,
            "paused": queue.paused,
            # Counted per type up to `metrics_max_types` types (null past it).
            "completed": tally.completed if own else None,
            "failed": tally.failed if own else None,
        }


def _held(master: MasterPeer) -> list[m.MasterRequest | bytes | dict[str, Any]] | None:
    """`master.held`, read afresh (a request handled just now may have set it)."""
    return master.held


def iter_frames(outbox: Iterable[bytes | dict[str, Any]]) -> Iterable[bytes]:
    """Encode an outbox as wire frames (tests and the server share this)."""
    for item in outbox:
        yield item if type(item) is bytes else encode_frame(item)
