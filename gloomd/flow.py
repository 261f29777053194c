"""How a job moves through the broker: the state, and every transition of a job.

`Flow` holds what the broker knows (jobs in every state, types' queues,
slaves, masters, deadlines, stores, counters) and the transitions of a job:
submitted, attached to, delayed, queued, handed to a slave, answered,
failed, retried, requeued, buried as a dead letter, put back (kicked),
removed; and the timer that fires what is due.  `gloomd.broker.Broker`
builds on it: messages in, and the other master actions (cancel, delete,
result, kick, jobs, pause, resume, stats) and shutdown.

No sockets and no clock of its own, and no parsing: the server hands it the
time (a monotonic clock for deadlines, a wall clock for ages) and collects,
from `dirty`, the peers that have frames waiting in their `outbox`.  Every
frame it queues is built by `gloomwire.vocabulary`.  What it holds lives in
plain objects: `gloomd.state` (a job, a type's queue, the logs that list
them), `gloomd.state`, `gloomd.counters`, `gloomd.timers`, `gloomd.stores`.

State, and the rules that keep it consistent
--------------------------------------------
* A job is WAITING (on its `after`), DELAYED (a `delay` or a retry's
  back-off), QUEUED (in its type's heap), RUNNING (held by exactly one
  slave), DEAD (a detached job that failed: kept until kicked, deleted or
  dropped past `max_dead`) or GONE.  `jobs` indexes every job that is not
  GONE by id: that index is what makes an id "taken".
* A live job leaves `jobs` exactly when its masters have been answered
  (result, `job_error`, `job_failed`) or it was removed (cancelled, deleted,
  its last master left); a dead one when it is deleted or dropped.  So an
  id is free again at that moment.
* A job's masters: the one that submitted it, and every master whose
  `unique` submit attached to it (`gloomd.attach`).  It is removed when the
  last one leaves, unless detached (never by a master leaving).
* When a running job's masters no longer want it (they left, or it timed
  out), the slave keeps holding it as an *orphan*: the slave is still
  working and gets no new job until it responds, and that response is acked
  and dropped.  A timed-out job that will be retried goes on as a copy
  (`Job.retry_copy`), so the orphan never comes back to life.
* Order within a type: a heap of (-priority, seq, job).  `seq` is the order
  of becoming ready: acceptance for a plain job (and a job released by its
  `after`), the moment a delay or a back-off ends, the moment of a kick; a
  requeued job keeps its own, so it goes back ahead of every later job of
  equal priority.  Removal is lazy (skipped when popped).
* Idle slaves of a type wait in an ordered set: the one idle longest gets the
  next job.  A paused type keeps its queue and its idle slaves and hands out
  nothing until resumed.
* Retries: a slave's `fail` of category ERROR or TIMEOUT, or the daemon's
  TIMEOUT, with retries left, makes the job DELAYED for
  `backoff * 2^(k-1)` seconds (at most 3600) for its k-th retry; its masters
  hear only the final outcome, whose failure frame says `attempt`.  Slave
  losses count apart, under `max_retries` (CRASH).
* Every operation checks everything that can fail before it changes anything
  (a deadline is computed before the job is marked running), so an exception
  cannot leave the state half-changed; the I/O layer then drops the peer
  (issue 18).

Bounded work per pass of the event loop: `tick` fires at most
`TICK_BUDGET` deadlines, so a million delayed jobs due at one moment become
ready over many passes, with every connection served in between
(`next_deadline` is then "at once": the timer comes back after the others).

Counting (issue 17): every accepted job (and every kick, which puts a dead
job back) is counted in `submitted`, and ends in exactly one of completed,
failed (dead letters included), cancelled (cancel and delete) or withdrawn
(its last master left), so that
    submitted = completed + failed + cancelled + withdrawn + live
where live is every job held but the dead ones (`live_jobs`).  `retried`,
`requeued` and `dead` count events.

Memory (issue 18): each peer's `pending` output is counted as it is queued,
so the I/O layer can stop reading a peer whose output is past a high-water
mark, and a peer sent more than `max_outbox` between two writes is marked
`overflowed` and dropped.  Frames that can be larger than what caused them
are encoded when queued and counted exactly: progress, stats and jobs
answers, stored results and dead letters' frames.  The frames of every job
(ack, job, result, failure) stay dicts until the flush encodes them, as
before: encoding them here cost 1.9 us a job (8%, measured), and each holds
only values already in memory, so they count `DICT_FRAME_BYTES`.  Stored
results and outcomes are capped in bytes as well as in count
(`gloomd.stores`), dead letters in count.
"""

from __future__ import annotations

import heapq
import logging
import time
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gloomwire.framing import encode_frame
from gloomwire.logformat import event
from gloomwire.vocabulary import (
    OK_FRAME,
    ack,
    attached,
    error,
    job_error,
    job_failed,
    progress,
    result,
)
from gloomwire.vocabulary import job as job_frame

from . import messages as m
from .attach import ATTACH, Registry, add_listener, claim, drop_listener, listeners
from .counters import BOUNDS, CATEGORY_OUTCOME, OK, Tallies
from .counters import CRASH as CRASHED
from .counters import DEPENDENCY as DEPENDENCY_FAILED
from .counters import TIMEOUT as TIMED_OUT
from .holds import Dispatch
from .logs import LogBudget
from .state import (
    DEAD,
    DELAYED,
    DICT_FRAME_BYTES,
    GONE,
    QUEUED,
    RUNNING,
    STATE_ALIVE,
    WAITING,
    Job,
    JobId,
    JobLog,
    MasterPeer,
    Peer,
    SlavePeer,
    TypeQueue,
    queued_alive,
)
from .stores import Stores
from .timers import DeadlineHeap, delay_alive, timeout_alive

if TYPE_CHECKING:
    from .durable import Durable

__all__ = ["INF", "TICK_BUDGET", "BrokerLimits", "Flow"]


log = logging.getLogger("gloomd.broker")

INF: Final = float("inf")
#: Deadlines one `tick` may fire or expire (timeouts, delays, results,
#: outcomes); past it the timer comes back after the loop served the others.
TICK_BUDGET: Final = 1000
#: A slave's `fail` categories that a job's `retries` retry (and the daemon's TIMEOUT).
RETRYABLE: Final = frozenset({"ERROR", "TIMEOUT"})
#: The longest back-off, however many retries (durability-and-operations.md).
MAX_BACKOFF_WAIT: Final = float(m.MAX_BACKOFF)
_FAILED_OUTCOME: Final = {"CRASH": CRASHED, "TIMEOUT": TIMED_OUT, "DEPENDENCY": DEPENDENCY_FAILED}


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """The broker's knobs, with the protocol's defaults."""

    max_queued: int = 1_000_000
    max_retries: int = 3  # a job is failed (CRASH) on its (max_retries + 1)-th loss
    result_ttl: float = 3600.0  # seconds a detached result (and an outcome) is kept
    max_results: int = 100_000
    #: Bytes of stored detached results (encoded frames, plus `stores.STORE_ENTRY_BYTES` each).
    max_result_bytes: int = 256 * 1024 * 1024
    #: Bytes of stored outcomes (ids, plus `stores.STORE_ENTRY_BYTES` each).
    max_outcome_bytes: int = 32 * 1024 * 1024
    #: Rows of per-type stats in one answer; the rest are summed in `types_omitted`.
    max_stats_types: int = 1000
    #: Characters of a string id (digits of an integer one).
    max_id: int = 1024
    #: Characters of a string type (bytes of any other type's canonical JSON).
    max_type: int = 1024
    #: Ids in one submit's `after`.
    max_after: int = 1000
    #: Keys and values in one frame.
    max_values: int = 262_144
    #: Log lines per second one connection may cause, and the burst it may save up.
    log_rate: float = 10.0
    log_burst: int = 100
    #: Dead letters kept at most; past it the oldest is dropped (`event=dead_dropped`).
    max_dead: int = 100_000
    #: Types with counters of their own (/metrics, stats' completed and failed).
    metrics_max_types: int = 1000

    def caps(self) -> m.Caps:
        return m.Caps(self.max_id, self.max_type, self.max_after, self.max_values)


def _type_key(job: Job) -> bytes | str:
    return job.key


class Flow:
    """The broker's state and the transitions of a job; see the module docstring."""

    def __init__(
        self,
        limits: BrokerLimits | None = None,
        clock: Callable[[], float] | None = None,
        max_outbox: int = 64 * 1024 * 1024,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits or BrokerLimits()
        #: What one frame may carry (`gloomd.ingest` validates against it).
        self.caps = self.limits.caps()
        self._max_outbox = max_outbox
        self._clock = clock or _zero_clock
        self._wall = wall
        #: Every job held, by id (the attach rule's registry shares the dict).
        self.registry: Registry[JobId, Job] = Registry(kind_of=_type_key)
        self.jobs = self.registry.live
        self.types: dict[bytes | str, TypeQueue] = {}
        self.masters: set[MasterPeer] = set()
        self.slaves: set[SlavePeer] = set()
        #: In-process masters (`gloomd.local`): masters in every rule, but no
        #: connection, so `stats` does not count them.
        self.internal: set[MasterPeer] = set()
        #: Peers whose outbox gained frames since the I/O layer last looked,
        #: in the order they gained them (a dict as an ordered set): the I/O
        #: layer writes them in that order, so the broker decides who hears
        #: first (see `submit` and `_respond`).
        self.dirty: dict[Peer, None] = {}
        #: Set when a new deadline is earlier than the one the timer waits for
        #: (`_timer_at`, from `next_deadline`).  Only then: jobs with the same
        #: timeout or results with the same TTL expire in the order they were
        #: made, so a wake-up per job would find nothing to do.
        self.timers_changed = False
        self._timer_at = INF
        #: WAITING + DELAYED + QUEUED jobs: what the queue cap counts.
        self.queued_total = 0
        # Sums over every type, kept as they change so that a stats answer
        # costs its rows, not the number of types (100,000 types made each
        # stats request cost 70 ms): RUNNING jobs are
        # len(jobs) - queued_total - dead_total.
        self.waiting_total = 0
        self.delayed_total = 0
        self.dead_total = 0
        self.joined = 0  # slaves that have joined a type
        self.idle_total = 0  # slaves waiting for a job
        self._seq = 0
        self._marks = 0  # keys of the delayed, waiting and dead logs
        self._serials = 0  # types' serials
        self._timeouts = DeadlineHeap(timeout_alive)
        self._delays = DeadlineHeap(delay_alive)
        #: Every dead job, oldest first: `max_dead` drops from the front.
        self._dead = JobLog(0)
        self._dead_logs = LogBudget()
        #: Per-type counters (`gloomd.counters`), outliving the queues.
        self.tallies = Tallies(self.limits.metrics_max_types)
        # Kicks by type under way, one chunk per pass, oldest first.
        self._behind = False  # the last tick ran out of budget
        #: Detached jobs' results and every job's outcome (`gloomd.stores`).
        limits = self.limits
        self.stores = Stores(
            limits.result_ttl, limits.max_results, limits.max_result_bytes, limits.max_outcome_bytes
        )
        self.totals = {
            "submitted": 0,
            "completed": 0,
            "failed": 0,
            "requeued": 0,
            "cancelled": 0,
            "retried": 0,
            "dead": 0,
            "withdrawn": 0,
        }
        self.started = self._clock()
        self.halted = False
        #: The journal's effects (`gloomd.durable`), None without a journal:
        #: then every transition pays one `is not None` and nothing else.
        self.journal: Durable | None = None

    def connect_master(
        self, name: str, transport: Any = None, *, internal: bool = False
    ) -> MasterPeer:
        """A new master; `internal` for an in-process one, which no stats count."""
        peer = MasterPeer(name, transport)
        (self.internal if internal else self.masters).add(peer)
        return peer

    def connect_slave(self, name: str, transport: Any = None) -> SlavePeer:
        peer = SlavePeer(name, transport)
        self.slaves.add(peer)
        return peer

    def send(self, peer: Peer, frame: bytes | dict[str, Any]) -> None:
        """Queue a frame for a peer (ingest and the I/O layer use this for
        their own frames: errors, authentication, final frames).

        `frame` is bytes (counted exactly) or a dict (encoded at the flush,
        counted `DICT_FRAME_BYTES`); see the module docstring.  Replies to a
        whole receive used to be weighed against the output cap only once
        they were all built (issue 18: 460 bytes of stats requests cost
        610 MB); now each is counted as it is queued.
        """
        pending = peer.pending + (len(frame) if type(frame) is bytes else DICT_FRAME_BYTES)
        if pending <= self._max_outbox:
            peer.pending = pending
            peer.outbox.append(frame)
        else:
            # Sent more than it reads: what is already queued goes out, the
            # rest is dropped with the peer at the next flush.
            peer.overflowed = True
        self.dirty[peer] = None

    def hold_reply(self, peer: Peer, reason: Any) -> None:
        """The next frame sent to `peer` waits for the journal's commit
        (`gloomd.holds`); `reason` names it in a `journal_error` if that fails.
        In-process masters are held too (`gloomd.local.LocalMaster.ask`).
        """
        journal = self.journal
        if journal is not None and journal.holds is not None:
            journal.holds.hold(peer, reason)

    def take_dirty(self) -> list[Peer]:
        """Hand the I/O layer the peers with frames to write, and forget them."""
        peers = list(self.dirty)
        self.dirty.clear()
        return peers

    def _tell_masters(self, job: Job, frame: bytes | dict[str, Any]) -> None:
        """Send `frame` to every master of the job; none of them is owed it after."""
        master = job.master
        if master is not None:
            job_id = job.id
            del master.jobs[job_id]
            self.send(master, frame)
            job.master = None
            # `job.others`, read where it lives: a property call per job costs
            # about 500 instructions in pure Python (`JobRare`).
            rare = job.rare
            others = None if rare is None else rare.others
            if others is not None:
                job.others = None
                for other in others:
                    del other.jobs[job_id]
                    self.send(other, frame)

    def submit(self, master: MasterPeer, msg: m.Submit) -> None:
        job_id = msg.id
        if self.halted:
            self.send(master, job_failed(job_id, "HALTED"))
            return
        live = self.jobs.get(job_id)
        if (live is not None or msg.unique) and self._claimed(master, msg, live):
            return
        waiting_on: list[Job] = []
        failed_dep: JobId | None = None
        for dep in msg.after:
            if dep == job_id and type(dep) is type(job_id):
                self.send(master, error("dependency_cycle", dep))
                return
            held = self.jobs.get(dep)
            if held is not None:
                if held.state == DEAD:  # ended in failure, kept as a dead letter
                    if failed_dep is None:
                        failed_dep = dep
                else:
                    waiting_on.append(held)
                continue
            outcome = self.stores.outcomes.get(dep)
            if outcome is None:
                self.send(master, error("unknown_dependency", dep))
                return
            if not outcome[1] and failed_dep is None:
                failed_dep = dep
        if self.queued_total >= self.limits.max_queued:
            self.send(master, error("queue_full", job_id))
            return

        now = self._clock()
        queue = self.types.get(msg.key) or self._queue_for(msg.type, msg.key)
        tally = queue.tally
        self._seq += 1
        job = Job(msg, self._seq, master, self._wall(), queue)
        self.jobs[job_id] = job
        master.jobs[job_id] = job
        tally.submitted += 1
        self.totals["submitted"] += 1
        if log.isEnabledFor(logging.DEBUG):
            event(log, "submit", logging.DEBUG, master=master.name, id=job_id, type=msg.type,
                  priority=job.priority)  # fmt: skip
        journal = self.journal
        if journal is not None and job.detached:
            journal.accepted(job)  # before `_enqueue`: a slave's job frame may be held
            self.hold_reply(master, job_id)
        delay = msg.delay
        if failed_dep is None and not waiting_on and not delay:
            # Hand it on before acking: a waiting slave's frame is on the
            # job's latency path and the ack is not, and peers are written
            # in the order they were told.
            self._enqueue(job, queue, now)
            self.send(master, ack(job_id))
            return
        self.send(master, ack(job_id))
        if failed_dep is not None:
            job.state = GONE  # never queued, so nothing to take out
            self._fail_job(job, "DEPENDENCY", now, failed_dep)
            self._forget_if_empty(queue)
        elif waiting_on:
            job.waiting = len(waiting_on)
            if delay:
                job.ready_at = now + delay  # runs while it waits; queued once both hold
            self._enter(job, queue, WAITING)
            for dep_job in waiting_on:
                if dep_job.dependents is None:
                    dep_job.dependents = []
                dep_job.dependents.append(job)
                if journal is not None and dep_job.detached:
                    journal.touched.add(dep_job.id)  # its record lists its dependents
        else:
            self._delay(job, queue, now + delay)  # type: ignore[operator]

    def _claimed(self, master: MasterPeer, msg: m.Submit, live: Job | None) -> bool:
        """The attach rule (`gloomd.attach`) for a taken id, or a `unique` one.

        True when the submit is answered here: attached, or `id_exists`.
        An attaching submit's other keys are not used: the job is the one
        that holds the id.
        """
        job_id = msg.id
        if live is not None:
            verdict, _ = self.registry.claim(job_id, msg.key, msg.unique)
            if verdict == ATTACH:
                self._attach(master, live)
            else:
                self.send(master, error("id_exists", job_id))
            return True
        stored = self.stores.results.get(job_id)
        if stored is None:
            return False
        # A finished detached job whose result is still kept.
        if claim(True, stored[2] == msg.key, True) == ATTACH:
            self.send(master, attached(job_id))
            self.send(master, stored[1])
        else:
            self.send(master, error("id_exists", job_id))
        return True

    def _attach(self, master: MasterPeer, job: Job) -> None:
        self.send(master, attached(job.id))
        if job.state == DEAD:
            assert job.final is not None
            self.send(master, job.final)
        elif add_listener(job, master):
            master.jobs[job.id] = job
        if log.isEnabledFor(logging.DEBUG):
            event(log, "attach", logging.DEBUG, master=master.name, id=job.id, type=job.type)

    def _queue_for(self, job_type: Any, key: bytes | str) -> TypeQueue:
        queue = self.types.get(key)
        if queue is None:
            self._serials += 1
            queue = TypeQueue(job_type, key, self._serials, self.tallies.of(key))
            self.types[key] = queue
        return queue

    def _enqueue(self, job: Job, queue: TypeQueue, now: float) -> None:
        """Hand a ready job to the longest-idle slave of its type, or queue it."""
        if queue.idle and not queue.paused:
            slave, _ = queue.idle.popitem(last=False)
            self.idle_total -= 1
            job.tally.wait_counts[0] += 1  # ready and taken at once: 0 s in the queue
            self._assign(slave, queue, job, now)
            return
        job.state = QUEUED
        job.stamp = now
        journal = self.journal
        if journal is not None and job.detached:
            journal.touched.add(job.id)
        entry = (-job.priority, job.seq, job)
        heapq.heappush(queue.heap, entry)
        queue.queued += 1
        self.queued_total += 1
        # The listing index (`gloomd.listing`): the same entry, in its lane.
        lane = queue.lanes.get(entry[0])
        if lane is None:
            lane = queue.lanes[entry[0]] = JobLog(1)
            insort(queue.prios, entry[0])
        if lane.add(entry):
            queue.lane_entries += 1
            if queue.lane_entries > 2 * queue.queued + 64:
                _compact_lanes(queue)

    def _assign(self, slave: SlavePeer, queue: TypeQueue, job: Job, now: float) -> None:
        # The frame and the deadline first: the deadline is what could fail.
        # `attempt` only on a redelivery and `timeout` only when set, after
        # Gloom's four keys: a first delivery is byte for byte Gloom's frame.
        timeout = job.timeout
        frame = job_frame(job.id, job.type, job.body, job.attempt + 1, timeout)
        if timeout is not None:
            deadline = now + timeout
        job.state = RUNNING
        job.attempt += 1
        job.stamp = now
        slave.job = job
        queue.running += 1
        if timeout is not None:
            job.deadline = deadline
            self._timeouts.push(deadline, job.seq, job)
            self._arm(deadline)
        journal = self.journal
        if journal is not None and job.detached:
            journal.touched.add(job.id)
            if journal.fresh is not None and job in journal.fresh:
                # Not yet in the journal: no slave runs it before it is.
                journal.holds.hold(slave, Dispatch(job))  # type: ignore[union-attr]
        self.send(slave, frame)

    def _slave_ready(self, slave: SlavePeer, now: float | None = None) -> None:
        """The slave holds nothing now: give it the best queued job, or idle it."""
        queue = slave.queue
        if queue is None:
            return
        if queue.queued and not queue.paused:
            heap = queue.heap
            while heap:
                job = heapq.heappop(heap)[2]
                if job.state == QUEUED:
                    queue.queued -= 1
                    self.queued_total -= 1
                    if now is None:
                        now = self._clock()
                    wait = now - job.stamp
                    tally = job.tally
                    tally.wait_counts[bisect_left(BOUNDS, wait)] += 1
                    tally.wait_sum += wait
                    self._assign(slave, queue, job, now)
                    return
        queue.idle[slave] = None
        self.idle_total += 1

    def _enter(self, job: Job, queue: TypeQueue, state: int) -> None:
        """The job enters DELAYED, WAITING or DEAD: counts, and an entry in that state's log."""
        job.state = state
        journal = self.journal
        if journal is not None and job.detached:
            journal.touched.add(job.id)
        self._marks += 1
        mark = job.mark = self._marks
        if state == DEAD:
            queue.dead += 1
            self.dead_total += 1
            count = queue.dead
        else:
            self.queued_total += 1
            if state == DELAYED:
                queue.delayed += 1
                self.delayed_total += 1
                count = queue.delayed
            else:
                queue.waiting += 1
                self.waiting_total += 1
                count = queue.waiting
        state_log = queue.log(state)
        state_log.entries.append((mark, job))
        if len(state_log) > 2 * count + 64:
            state_log.compact(STATE_ALIVE[state])

    def _leave(self, job: Job, queue: TypeQueue) -> None:
        """The job leaves DELAYED, WAITING or DEAD (its log entry goes stale)."""
        state = job.state
        if state == DEAD:
            queue.dead -= 1
            self.dead_total -= 1
            return
        self.queued_total -= 1
        if state == DELAYED:
            queue.delayed -= 1
            self.delayed_total -= 1
        else:
            queue.waiting -= 1
            self.waiting_total -= 1

    def _delay(self, job: Job, queue: TypeQueue, ready_at: float) -> None:
        job.ready_at = ready_at
        self._enter(job, queue, DELAYED)
        self._delays.push(ready_at, job.mark, job)
        self._arm(ready_at)

    def _ready(self, job: Job, now: float) -> None:
        """A delayed job's time came: it queues by this moment (a new seq)."""
        queue = self.types[job.key]
        self._leave(job, queue)
        job.ready_at = 0.0
        self._seq += 1
        job.seq = self._seq
        self._enqueue(job, queue, now)

    def _join(self, slave: SlavePeer, msg: m.Join) -> None:
        job = slave.job
        if job is not None:
            slave.job = None
            if job.state == RUNNING:
                # Put back without counting a loss: the slave gave it up.
                self._requeue(job, slave.queue)
        self._leave_queue(slave)
        queue = self._queue_for(msg.type, msg.key)
        slave.queue = queue
        queue.slaves += 1
        self.joined += 1
        if self._may_log(slave):
            event(log, "join", slave=slave.name, type=msg.type)
        self.send(slave, OK_FRAME)
        self._slave_ready(slave)

    def _hand_back(self, slave: SlavePeer) -> Job | None:
        """The slave is done with its job (respond or fail): return the job
        if its masters still want an answer (None for an orphan).

        The caller answers the masters first and acks the slave after: the
        result is on the job's latency path, the slave's ok is not.
        """
        job = slave.job
        assert job is not None
        slave.job = None
        if job.state != RUNNING:
            return None
        assert slave.queue is not None
        slave.queue.running -= 1
        return job

    def _respond(self, slave: SlavePeer, body: Any) -> None:
        # `_hand_back`, inlined: one job in every respond.
        job = slave.job
        assert job is not None and slave.queue is not None
        now: float | None = None
        if job.state == RUNNING:
            slave.job = None
            slave.queue.running -= 1
            now = self._clock()
            ran = now - job.stamp
            tally = job.tally
            tally.run_counts[bisect_left(BOUNDS, ran)] += 1
            tally.run_sum += ran
            tally.finished[OK] += 1
            self.totals["completed"] += 1
            self._finish(job, result(job.id, body), True, now)
        else:
            slave.job = None  # an orphan: acked and dropped
        self.send(slave, OK_FRAME)
        self._slave_ready(slave, now)

    def _progress(self, slave: SlavePeer, body: Any) -> None:
        job = slave.job
        assert job is not None
        if job.state == RUNNING and job.master is not None:
            # Encoded now: any number of them per job, each echoing the id.
            frame = encode_frame(progress(job.id, body))
            self.send(job.master, frame)
            if job.others is not None:
                for other in job.others:
                    self.send(other, frame)

    def _fail(self, slave: SlavePeer, msg: m.Fail) -> None:
        job = self._hand_back(slave)
        now: float | None = None
        if job is not None:
            now = self._clock()
            job.tally.ran(now - job.stamp)
            category = msg.category
            if category in RETRYABLE and _retries_left(job):
                self._retry(job, now, slave)
            else:
                frame = job_error(job.id, category, msg.reason)
                if job.retries is not None:
                    frame["attempt"] = job.attempt
                self.totals["failed"] += 1
                job.tally.finished[CATEGORY_OUTCOME[category]] += 1
                if self._may_log(slave):
                    event(log, "failure", id=job.id, type=job.type, category=category,
                          attempt=job.attempt, slave=slave.name)  # fmt: skip
                self._end_failed(job, frame, now)
        self.send(slave, OK_FRAME)
        self._slave_ready(slave, now)

    def _retry(self, job: Job, now: float, cause: Peer | None) -> None:
        """The job failed with retries left: DELAYED for its back-off; its masters hear nothing."""
        job.retried += 1
        backoff = 1.0 if job.backoff is None else job.backoff
        wait = min(backoff * 2.0 ** min(job.retried - 1, 64), MAX_BACKOFF_WAIT)
        self.totals["retried"] += 1
        if cause is None or self._may_log(cause):
            event(log, "retry", id=job.id, type=job.type, attempt=job.attempt, retry=job.retried,
                  wait_s=wait)  # fmt: skip
        self._delay(job, self._queue_for(job.type, job.key), now + wait)

    def _drop_slave(self, slave: SlavePeer) -> None:
        self.slaves.discard(slave)
        job = slave.job
        slave.job = None
        self._leave_queue(slave)
        if job is None or job.state != RUNNING:
            return
        job.losses += 1
        if job.losses > self.limits.max_retries:
            event(log, "failure", id=job.id, type=job.type, category="CRASH", losses=job.losses)
            self._orphan(job)
            self._fail_job(job, "CRASH", self._clock())
        else:
            self.totals["requeued"] += 1
            event(log, "requeue", id=job.id, type=job.type, losses=job.losses, slave=slave.name)
            self._requeue(job, None)

    def _leave_queue(self, slave: SlavePeer) -> None:
        queue = slave.queue
        if queue is None:
            return
        slave.queue = None
        queue.slaves -= 1
        self.joined -= 1
        if slave in queue.idle:
            del queue.idle[slave]
            self.idle_total -= 1
        self._forget_if_empty(queue)

    def _requeue(self, job: Job, queue: TypeQueue | None) -> None:
        """A running job goes back, keeping its seq (its place in line)."""
        if queue is None:
            queue = self._queue_for(job.type, job.key)
        queue.running -= 1
        self._enqueue(job, queue, self._clock())

    def _revive(self, job: Job, now: float) -> None:
        """A dead job goes back to its queue: a new seq (the moment of the kick),
        its retries left reset, its attempt count kept."""
        queue = self.types[job.key]
        self._leave(job, queue)
        job.final = None
        job.retried = 0
        job.losses = 0
        if job.retries is None:
            job.retries = 0  # kicked once, its failure frames say which attempt
        self._seq += 1
        job.seq = self._seq
        job.tally.submitted += 1
        self.totals["submitted"] += 1
        self._enqueue(job, queue, now)

    def _withdraw(self, master: MasterPeer) -> None:
        """`master` is gone: it stops listening to its jobs, and those it was
        the last master of are removed (never a detached one)."""
        jobs = list(master.jobs.values())
        master.jobs.clear()
        # All first: removing one job can fail its dependents, and those may
        # be this master's too; nobody is left to tell.
        left = [job for job in jobs if drop_listener(job, master) and not job.detached]
        if not left:
            return
        now = self._clock()
        for job in left:
            if job.state == GONE or job.master is not None:
                continue  # failed just now as the dependent of an earlier one
            self.totals["withdrawn"] += 1
            if job.state == RUNNING:
                self._orphan(job)
                self._forget(job, False, now)
            else:
                self._remove(job, None, now)

    def _take_out(self, job: Job) -> TypeQueue:
        """A WAITING, DELAYED, QUEUED or DEAD job leaves its state (and is GONE)."""
        queue = self.types[job.key]
        if job.state == QUEUED:
            queue.queued -= 1
            self.queued_total -= 1
            if queue.queued == 0:
                queue.heap.clear()  # every entry left is dead
            elif len(queue.heap) > 64 and len(queue.heap) > 2 * queue.queued:
                queue.heap = [entry for entry in queue.heap if entry[2].state == QUEUED]
                heapq.heapify(queue.heap)
        elif job.state != GONE:
            self._leave(job, queue)
        job.state = GONE
        journal = self.journal
        if journal is not None and job.detached:
            journal.touched.add(job.id)
        return queue

    def _remove(self, job: Job, frame: dict[str, Any] | None, now: float) -> None:
        """Take a job out of its state; `frame` tells its masters, if any."""
        queue = self._take_out(job)
        if frame is not None:
            self._finish(job, frame, False, now)
        else:
            self._forget(job, False, now)
        self._forget_if_empty(queue)

    def _drop_dead(self, job: Job) -> None:
        """A dead job goes for good (deleted, or the oldest past `max_dead`)."""
        queue = self._take_out(job)
        job.final = None
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        self._forget_if_empty(queue)

    def _orphan(self, job: Job) -> None:
        """A running job nobody waits for any more; its slave keeps it until it answers."""
        job.state = GONE
        queue = self.types[job.key]
        queue.running -= 1
        self._forget_if_empty(queue)

    def _fail_job(
        self, job: Job, category: str, now: float, dependency: JobId | None = None
    ) -> None:
        """End, with `job_failed`, a job that no slave is working on for it.

        A DEPENDENCY failure names the job in `after` that failed, so the
        master can tell which one (myjobs' `dependency_failure`).
        """
        if dependency is None:
            frame = job_failed(job.id, category)
        else:
            frame = job_failed(job.id, category, dependency=dependency)
        if job.retries is not None:
            frame["attempt"] = job.attempt
        if job.master is None and not job.detached:
            # Its last master has just left (the dependent of a job withdrawn
            # with it): it goes the way that job went, told to nobody.
            self.totals["withdrawn"] += 1
        else:
            self.totals["failed"] += 1
            job.tally.finished[_FAILED_OUTCOME[category]] += 1
        queue = None
        if job.state != GONE:
            queue = self._take_out(job)
        self._end_failed(job, frame, now)
        if queue is not None:
            self._forget_if_empty(queue)

    def _end_failed(self, job: Job, frame: dict[str, Any], now: float) -> None:
        """A final failure: a detached job becomes a dead letter, any other ends."""
        if job.detached:
            self._bury(job, frame, now)
        else:
            self._finish(job, frame, False, now)

    def _bury(self, job: Job, frame: dict[str, Any], now: float) -> None:
        """The job is DEAD: kept with its failure frame until kicked or deleted.

        Its masters are told now, and jobs waiting on it fail (DEPENDENCY);
        past `max_dead` the oldest dead job is dropped.
        """
        final = encode_frame(frame)
        job.final = final
        self._enter(job, self._queue_for(job.type, job.key), DEAD)
        dead = self._dead
        dead.entries.append((job.mark, job))
        if len(dead) > 2 * self.dead_total + 64:
            dead.compact(STATE_ALIVE[DEAD])
        self.totals["dead"] += 1
        self._tell_masters(job, final)
        self._settle(job, False, now)
        if self.dead_total > self.limits.max_dead:
            self._cap_dead(now)

    def _cap_dead(self, now: float) -> None:
        dead = self._dead
        alive = STATE_ALIVE[DEAD]
        limits = self.limits
        while self.dead_total > limits.max_dead:
            dead.trim(alive)
            job: Job = dead.entries[dead.head][1]
            self._drop_dead(job)
            if self._dead_logs.allow(now, limits.log_rate, limits.log_burst, "dead_dropped"):
                event(log, "dead_dropped", id=job.id, type=job.type, max_dead=limits.max_dead)

    def _finish(self, job: Job, frame: bytes | dict[str, Any], ok: bool, now: float) -> None:
        """Answer the job's masters and free its id; then release its dependents."""
        if job.detached and type(frame) is not bytes:  # (rare: `detached` first)
            frame = encode_frame(frame)  # once, for the masters and the store
        job.state = GONE
        if job.master is not None:
            self._tell_masters(job, frame)
        if job.detached:
            self._arm(self.stores.store_result(job.id, job.key, frame, now))  # type: ignore[arg-type]
        self._forget(job, ok, now)

    def _forget(self, job: Job, ok: bool, now: float) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        journal = self.journal
        if journal is not None and job.detached:
            journal.touched.add(job.id)  # its result now, or nothing
        # `_settle` and `_arm`, inlined for the job with no dependents: every job ends here.
        expires = self.stores.record_outcome(job.id, ok, now)
        if expires < self._timer_at:
            self.timers_changed = True
        rare = job.rare  # `job.dependents` without the property call, as in `_tell_masters`
        if rare is not None and rare.dependents:
            self._release_dependents(job, ok, now)

    def _settle(self, job: Job, ok: bool, now: float) -> None:
        """Record the job's outcome (for `after`) and release or fail its dependents."""
        self._arm(self.stores.record_outcome(job.id, ok, now))
        if job.dependents:
            self._release_dependents(job, ok, now)

    def _release_dependents(self, job: Job, ok: bool, now: float) -> None:
        dependents = job.dependents
        assert dependents is not None
        job.dependents = None
        if ok and len(dependents) > 1:
            # Released together, they must reach idle slaves in queue order.
            dependents.sort(key=_queue_order)
        for dependent in dependents:
            if dependent.state != WAITING:
                continue
            if ok:
                dependent.waiting -= 1
                if dependent.waiting == 0:
                    self._released(dependent, now)
                elif self.journal is not None and dependent.detached:
                    self.journal.touched.add(dependent.id)  # its record counts what it waits on
            else:
                self._fail_job(dependent, "DEPENDENCY", now, job.id)

    def _released(self, job: Job, now: float) -> None:
        """Every job in its `after` completed: queue it (or delay it, if its delay runs on)."""
        queue = self.types[job.key]
        self._leave(job, queue)
        if job.ready_at > now:
            self._delay(job, queue, job.ready_at)
            return
        if job.ready_at:
            # Its delay ended while it waited: it became ready now.
            job.ready_at = 0.0
            self._seq += 1
            job.seq = self._seq
        self._enqueue(job, queue, now)

    def _forget_if_empty(self, queue: TypeQueue) -> None:
        if queue.is_empty() and self.types.get(queue.key) is queue:
            del self.types[queue.key]

    def next_deadline(self) -> float:
        """When `tick` next has something to do (inf if never, -inf at once).

        The caller (the timer) sleeps until then, so it needs waking only for
        an earlier deadline: see `timers_changed`.  Work the last tick left
        (its budget ran out) is due at once: the timer then comes back after
        the event loop served everyone else.
        """
        self.timers_changed = False
        if self._behind:
            deadline = -INF
        else:
            deadline = min(self._timeouts.first(), self._delays.first(), self.stores.first())
        self._timer_at = deadline
        return deadline

    def _arm(self, when: float) -> None:
        if when < self._timer_at:
            self.timers_changed = True

    def tick(self, now: float) -> None:
        """Fire what is due at `now`: at most `TICK_BUDGET` timeouts, delays and expiries."""
        budget = TICK_BUDGET
        timeouts = self._timeouts
        while budget > 0:
            job = timeouts.pop_due(now)
            if job is None:
                break
            budget -= 1
            self._timed_out(job, now)
        delays = self._delays
        while budget > 0:
            job = delays.pop_due(now)
            if job is None:
                break
            budget -= 1
            self._ready(job, now)
        self._behind = self.stores.expire(now, budget) <= 0

    def _timed_out(self, job: Job, now: float) -> None:
        """A running job passed its timeout: retried if it may be, else failed (TIMEOUT)."""
        retry = _retries_left(job)
        if retry or job.detached:
            # The slave keeps the original as an orphan; a copy goes on: retried, or
            # dead, where a kick may bring it back to life (the orphan must not
            # come back with it: its late answer would complete the kicked job).
            orphan = job
            job = orphan.retry_copy(self.types[orphan.key])
            orphan.state = GONE
            orphan.master = orphan.others = orphan.dependents = None
            self.jobs[job.id] = job
            for listener in listeners(job):
                listener.jobs[job.id] = job
            if retry:
                self.types[job.key].running -= 1
                self._retry(job, now, job.master)
                return
        master = job.master
        self._orphan(job)
        if master is None or self._may_log(master):
            event(log, "failure", id=job.id, type=job.type, category="TIMEOUT", attempt=job.attempt)
        self._fail_job(job, "TIMEOUT", now)

    def _may_log(self, peer: Peer) -> bool:
        """May `peer` cause one more log line now?  (See `LogBudget`.)"""
        limits = self.limits
        return peer.logs.allow(self._clock(), limits.log_rate, limits.log_burst, peer.name)

    def live_jobs(self) -> int:
        """Jobs held and not dead: the `live` of the counting identity (module docstring)."""
        return len(self.jobs) - self.dead_total


def _compact_lanes(queue: TypeQueue) -> None:
    """Drop the stale entries of a type's lanes, and the lanes left empty."""
    total = 0
    for prio in list(queue.lanes):
        left = queue.lanes[prio].compact(queued_alive)
        if left:
            total += left
        else:
            del queue.lanes[prio]
            del queue.prios[bisect_left(queue.prios, prio)]
    queue.lane_entries = total


def _retries_left(job: Job) -> bool:
    return job.retries is not None and job.retried < job.retries


def _queue_order(job: Job) -> tuple[int, int]:
    return (-job.priority, job.seq)


def _zero_clock() -> float:
    return 0.0
