"""The broker: every rule of job routing, as pure state.

No sockets and no clock of its own, and no parsing: each connection's
`gloomd.ingest.Ingest` hands it typed messages (`slave_message`,
`master_message`), the server hands it the current time, and afterwards
collects, from `dirty`, the peers that have frames waiting in their `outbox`.
Every frame it queues is built by `gloomwire.vocabulary`.  That keeps every
rule of the protocol testable by calling methods and reading outboxes.

State, and the rules that keep it consistent
--------------------------------------------
* A job is WAITING (for jobs named in `after`), QUEUED (in its type's heap),
  RUNNING (held by exactly one slave) or gone.  `jobs` indexes every job that
  is not gone by id: that index is what makes an id "taken".
* A job leaves `jobs` exactly when its master has been answered (result,
  `job_error`, `job_failed`) or it was removed (cancelled, master left).  So an
  id is free again at that moment, and every accepted job is answered once.
* When a running job's master no longer wants it (the master left, or the job
  timed out), the slave keeps holding it as an *orphan*: the slave is still
  working and gets no new job until it responds, and that response is acked
  and dropped.
* Order within a type: a heap of (-priority, seq, job).  `seq` is the order of
  acceptance and a requeued job keeps its own, so it goes back ahead of every
  later job of equal priority.  Removal is lazy (the entry is skipped when
  popped), with a compaction when dead entries dominate a heap.
* Idle slaves of a type wait in an ordered set: the one idle longest gets the
  next job, so idle slaves share work fairly.
* Every operation checks everything that can fail before it changes anything
  (a deadline is computed before the job is marked running), so an exception
  cannot leave the state half-changed; the I/O layer then drops the peer
  (issue 18).  What is sent can always be encoded: every value in a frame was
  decoded under `gloomwire.codec`'s policy.

Memory (issue 18): each peer's `pending` output is counted as it is queued,
so the I/O layer can stop reading a peer whose output is past a high-water
mark, and a peer sent more than `max_outbox` between two writes is marked
`overflowed` and dropped.  Frames that can be larger than what caused them
are encoded when queued and counted exactly: progress (any number per job,
each echoing the id), stats answers, stored results.  The frames of every job
(ack, job, result, failure) stay dicts until the flush encodes them, as
before: encoding them here cost 1.9 us a job (8%, measured), and each holds
only values already in memory, so they count `DICT_FRAME_BYTES`; their
encoded size is weighed against the output cap when they are written.
Stored results and outcomes are capped in bytes as well as in count, and
`stats` lists at most `max_stats_types` types, summarising the rest.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from gloomwire.framing import encode_frame
from gloomwire.vocabulary import (
    OK_FRAME,
    ack,
    error,
    job_error,
    job_failed,
    progress,
    result,
)
from gloomwire.vocabulary import job as job_frame
from gloomwire.vocabulary import stats as stats_frame

from . import messages as m
from .logs import LogBudget

__all__ = ["OK_FRAME", "Broker", "BrokerLimits", "Job", "MasterPeer", "Peer", "SlavePeer"]

log = logging.getLogger("gloomd.broker")

# Job states.
WAITING: Final = 0
QUEUED: Final = 1
RUNNING: Final = 2
GONE: Final = 3  # answered or removed: only an orphan's slave still refers to it

#: What a frame queued as a dict counts toward a peer's `pending` bytes (an
#: ack with a 36-character id is 58 bytes framed).
DICT_FRAME_BYTES: Final = 64
_EVERY_TYPE: Final = m.Stats()  # the stats request without a type
INF: Final = float("inf")
#: Size of the timeout heap below which stale entries are never swept.
_TIMEOUTS_MIN: Final = 1024

JobId = str | int


#: What one entry of the result or outcome store costs besides its id and
#: frame, for the byte caps: the OrderedDict slot and link, the tuple, the
#: float (measured with tracemalloc: 230-250 bytes per entry).
STORE_ENTRY_BYTES: Final = 256


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """The broker's knobs, with the protocol's defaults."""

    max_queued: int = 1_000_000
    max_retries: int = 3  # a job is failed (CRASH) on its (max_retries + 1)-th loss
    result_ttl: float = 3600.0  # seconds a detached result (and an outcome) is kept
    max_results: int = 100_000
    #: Bytes of stored detached results (encoded frames, plus STORE_ENTRY_BYTES each).
    max_result_bytes: int = 256 * 1024 * 1024
    #: Bytes of stored outcomes (ids, plus STORE_ENTRY_BYTES each).
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

    def caps(self) -> m.Caps:
        return m.Caps(self.max_id, self.max_type, self.max_after, self.max_values)


class Peer:
    """One connection as the broker sees it: an outbox and nothing of I/O.

    `transport` belongs to the I/O layer, which uses it to find its
    connection from a dirty peer (and clears it when the connection is
    gone, so that the two do not keep each other alive); the broker never
    looks at it.
    """

    __slots__ = ("logs", "name", "outbox", "overflowed", "pending", "transport")

    def __init__(self, name: str, transport: Any = None) -> None:
        #: Encoded frames not yet handed to the I/O layer (tests may add dicts).
        self.outbox: list[bytes | dict[str, Any]] = []
        #: Bytes in `outbox`: what the I/O layer weighs against its high-water mark.
        self.pending = 0
        #: Sent more than `max_outbox` bytes between two writes: to be dropped.
        self.overflowed = False
        self.name = name
        self.transport = transport
        self.logs = LogBudget()


class MasterPeer(Peer):
    __slots__ = ("jobs",)

    def __init__(self, name: str, transport: Any = None) -> None:
        super().__init__(name, transport)
        self.jobs: dict[JobId, Job] = {}  # its jobs not yet answered


class SlavePeer(Peer):
    __slots__ = ("job", "queue")

    def __init__(self, name: str, transport: Any = None) -> None:
        super().__init__(name, transport)
        self.queue: TypeQueue | None = None  # set by join
        self.job: Job | None = None  # held job (possibly an orphan)


class Job:
    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "dependents",
        "detached",
        "id",
        "key",
        "losses",
        "master",
        "priority",
        "seq",
        "state",
        "timeout",
        "type",
        "waiting",
    )

    def __init__(self, msg: m.Submit, seq: int, master: MasterPeer | None) -> None:
        self.id = msg.id
        self.type = msg.type
        self.key = msg.key
        self.priority = msg.priority
        self.body = msg.body
        self.seq = seq
        self.master = master
        self.detached = msg.detach
        self.timeout = msg.timeout
        self.attempt = 0
        self.losses = 0
        self.state = WAITING
        self.deadline = 0.0
        self.waiting = 0  # jobs in `after` not yet completed
        self.dependents: list[Job] | None = None


class TypeQueue:
    """Everything about one job type: its heap, its slaves, its counters."""

    __slots__ = ("heap", "idle", "key", "queued", "running", "slaves", "type")

    def __init__(self, job_type: Any, key: bytes | str) -> None:
        self.type = job_type
        self.key = key
        self.heap: list[tuple[int, int, Job]] = []
        self.queued = 0  # live entries of heap
        self.running = 0  # jobs held by slaves, orphans excluded
        self.slaves = 0
        self.idle: OrderedDict[SlavePeer, None] = OrderedDict()

    def is_empty(self) -> bool:
        return not (self.queued or self.running or self.slaves)


class Broker:
    """Queues, slaves, masters and in-flight jobs; see the module docstring."""

    def __init__(
        self,
        limits: BrokerLimits | None = None,
        clock: Callable[[], float] | None = None,
        max_outbox: int = 64 * 1024 * 1024,
    ) -> None:
        self.limits = limits or BrokerLimits()
        #: What one frame may carry (`gloomd.ingest` validates against it).
        self.caps = self.limits.caps()
        self._max_outbox = max_outbox
        self._clock = clock or _zero_clock
        self.jobs: dict[JobId, Job] = {}
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
        self.queued_total = 0  # QUEUED + WAITING jobs: what the queue cap counts
        # Sums over every type, kept as they change so that a stats answer
        # costs its rows, not the number of types (100,000 types made each
        # stats request cost 70 ms): RUNNING jobs are len(jobs) - queued_total.
        self.waiting_total = 0  # WAITING jobs
        self.joined = 0  # slaves that have joined a type
        self.idle_total = 0  # slaves waiting for a job
        self._seq = 0
        # Running jobs' deadlines, deleted lazily: a finished job's entry stays
        # until it comes up, or until stale entries are half the heap (see
        # `_push_timeout`), which bounds what finished jobs keep alive.
        self._timeouts: list[tuple[float, int, Job]] = []
        self._timeouts_cap = _TIMEOUTS_MIN
        # Detached jobs' final frames, and every job's outcome (for `after`),
        # both in order of expiry since the TTL is the same for all.
        # Results are kept encoded: a `result` request sends the same bytes
        # object, however many times it is asked for.
        self._results: OrderedDict[JobId, tuple[float, bytes]] = OrderedDict()
        self._outcomes: OrderedDict[JobId, tuple[float, bool]] = OrderedDict()
        self.result_bytes = 0
        self.outcome_bytes = 0
        self.totals = {"submitted": 0, "completed": 0, "failed": 0, "requeued": 0, "cancelled": 0}
        self.started = self._clock()
        self.halted = False

    # ------------------------------------------------------------ connections

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

    def disconnect(self, peer: Peer) -> None:
        """The peer's connection is gone, for whatever reason."""
        self.dirty.pop(peer, None)
        peer.outbox = []
        peer.pending = 0
        if peer.logs.suppressed:
            log.info("event=log_suppressed peer=%s lines=%d", peer.name, peer.logs.suppressed)
        if isinstance(peer, SlavePeer):
            self._drop_slave(peer)
        elif isinstance(peer, MasterPeer):
            self._drop_master(peer)

    # ------------------------------------------------------------ messages in

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
            self._cancel(master, msg.id)  # type: ignore[union-attr]
        elif cls is m.Result:
            self._result(master, msg.id)  # type: ignore[union-attr]
        elif cls is m.Stats:
            # Encoded now: a stats answer can be a megabyte (see `send`).
            self.send(master, encode_frame(stats_frame(self.stats(msg))))  # type: ignore[arg-type]
        else:
            raise TypeError(f"not a master request: {cls.__name__}")

    # ------------------------------------------------------------ output

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

    def take_dirty(self) -> list[Peer]:
        """Hand the I/O layer the peers with frames to write, and forget them."""
        peers = list(self.dirty)
        self.dirty.clear()
        return peers

    def _tell_master(self, job: Job, frame: bytes | dict[str, Any]) -> None:
        master = job.master
        if master is not None:
            del master.jobs[job.id]
            self.send(master, frame)

    # ------------------------------------------------------------ submit

    def submit(self, master: MasterPeer, msg: m.Submit) -> None:
        job_id = msg.id
        if self.halted:
            self.send(master, job_failed(job_id, "HALTED"))
            return
        if job_id in self.jobs:
            self.send(master, error("id_exists", job_id))
            return
        waiting_on: list[Job] = []
        failed_dep: JobId | None = None
        for dep in msg.after:
            if dep == job_id and type(dep) is type(job_id):
                self.send(master, error("dependency_cycle", dep))
                return
            live = self.jobs.get(dep)
            if live is not None:
                waiting_on.append(live)
                continue
            outcome = self._outcomes.get(dep)
            if outcome is None:
                self.send(master, error("unknown_dependency", dep))
                return
            if not outcome[1] and failed_dep is None:
                failed_dep = dep
        if self.queued_total >= self.limits.max_queued:
            self.send(master, error("queue_full", job_id))
            return

        self._seq += 1
        job = Job(msg, self._seq, master)
        self.jobs[job_id] = job
        master.jobs[job_id] = job
        self.totals["submitted"] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=submit master=%s id=%r priority=%d", master.name, job_id, job.priority)
        if failed_dep is None and not waiting_on:
            # Hand it on before acking: a waiting slave's frame is on the
            # job's latency path and the ack is not, and peers are written
            # in the order they were told.
            self._enqueue(job)
            self.send(master, ack(job_id))
            return
        self.send(master, ack(job_id))
        if failed_dep is not None:
            job.state = GONE  # never queued, so nothing to take out
            self._fail_job(job, "DEPENDENCY", failed_dep)
        else:
            job.waiting = len(waiting_on)
            self.queued_total += 1
            self.waiting_total += 1
            for dep_job in waiting_on:
                if dep_job.dependents is None:
                    dep_job.dependents = []
                dep_job.dependents.append(job)

    def _queue_for(self, job_type: Any, key: bytes | str) -> TypeQueue:
        queue = self.types.get(key)
        if queue is None:
            queue = self.types[key] = TypeQueue(job_type, key)
        return queue

    def _enqueue(self, job: Job) -> None:
        """Hand a ready job to the longest-idle slave of its type, or queue it."""
        queue = self._queue_for(job.type, job.key)
        if queue.idle:
            slave, _ = queue.idle.popitem(last=False)
            self.idle_total -= 1
            self._assign(slave, queue, job)
            return
        job.state = QUEUED
        heapq.heappush(queue.heap, (-job.priority, job.seq, job))
        queue.queued += 1
        self.queued_total += 1

    def _assign(self, slave: SlavePeer, queue: TypeQueue, job: Job) -> None:
        # The frame and the deadline first: the deadline is what could fail.
        # `attempt` only on a redelivery and `timeout` only when set, after
        # Gloom's four keys: a first delivery is byte for byte Gloom's frame.
        timeout = job.timeout
        frame = job_frame(job.id, job.type, job.body, job.attempt + 1, timeout)
        if timeout is not None:
            deadline = self._clock() + timeout
        job.state = RUNNING
        job.attempt += 1
        slave.job = job
        queue.running += 1
        if timeout is not None:
            job.deadline = deadline
            self._push_timeout(job)
        self.send(slave, frame)

    def _slave_ready(self, slave: SlavePeer) -> None:
        """The slave holds nothing now: give it the best queued job, or idle it."""
        queue = slave.queue
        if queue is None:
            return
        heap = queue.heap
        while heap:
            job = heapq.heappop(heap)[2]
            if job.state == QUEUED:
                queue.queued -= 1
                self.queued_total -= 1
                self._assign(slave, queue, job)
                return
        queue.idle[slave] = None
        self.idle_total += 1

    # ------------------------------------------------------------ slave actions

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
            log.info("event=join slave=%s type=%s", slave.name, _short(msg.type))
        self.send(slave, OK_FRAME)
        self._slave_ready(slave)

    def _hand_back(self, slave: SlavePeer) -> Job | None:
        """The slave is done with its job (respond or fail): return the job
        if its master still wants an answer (None for an orphan).

        The caller answers the master first and acks the slave after: the
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
        if job.state == RUNNING:
            slave.job = None
            slave.queue.running -= 1
            self.totals["completed"] += 1
            self._finish(job, result(job.id, body), ok=True)
        else:
            slave.job = None  # an orphan: acked and dropped
        self.send(slave, OK_FRAME)
        self._slave_ready(slave)

    def _progress(self, slave: SlavePeer, body: Any) -> None:
        job = slave.job
        assert job is not None
        if job.state == RUNNING and job.master is not None:
            # Encoded now: any number of them per job, each echoing the id.
            self.send(job.master, encode_frame(progress(job.id, body)))

    def _fail(self, slave: SlavePeer, msg: m.Fail) -> None:
        job = self._hand_back(slave)
        if job is not None:
            frame = job_error(job.id, msg.category, msg.reason)
            self.totals["failed"] += 1
            if self._may_log(slave):
                log.info(
                    "event=failure id=%r category=%s slave=%s", job.id, msg.category, slave.name
                )
            self._finish(job, frame, ok=False)
        self.send(slave, OK_FRAME)
        self._slave_ready(slave)

    def _drop_slave(self, slave: SlavePeer) -> None:
        self.slaves.discard(slave)
        job = slave.job
        slave.job = None
        self._leave_queue(slave)
        if job is None or job.state != RUNNING:
            return
        job.losses += 1
        if job.losses > self.limits.max_retries:
            self.totals["failed"] += 1
            log.info("event=failure id=%r category=CRASH losses=%d", job.id, job.losses)
            self._orphan(job)
            self._fail_job(job, "CRASH")
        else:
            self.totals["requeued"] += 1
            log.info("event=requeue id=%r losses=%d slave=%s", job.id, job.losses, slave.name)
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
        self._enqueue(job)

    # ------------------------------------------------------------ master actions

    def _cancel(self, master: MasterPeer, job_id: JobId) -> None:
        job = self.jobs.get(job_id)
        if job is None or not (job.master is master or job.detached):
            self.send(master, error("unknown_id", job_id))
            return
        if job.state == RUNNING:
            self.send(master, error("invalid_state", "running"))
            return
        self.totals["cancelled"] += 1
        self.send(master, ack(job_id))
        frame = job_failed(job_id, "CANCELLED")
        if job.master is master:
            # The canceller is the submitter: the ack is its answer.
            del master.jobs[job_id]
            job.master = None
        self._remove_queued(job, frame)

    def _result(self, master: MasterPeer, job_id: JobId) -> None:
        stored = self._results.get(job_id)
        if stored is not None:
            self.send(master, stored[1])
            return
        job = self.jobs.get(job_id)
        if job is not None and (job.detached or job.master is master):
            self.send(master, error("not_ready", job_id))
        else:
            self.send(master, error("unknown_id", job_id))

    def _drop_master(self, master: MasterPeer) -> None:
        self.masters.discard(master)
        self.internal.discard(master)
        jobs = list(master.jobs.values())
        master.jobs.clear()
        for job in jobs:
            # All first: removing one job can fail its dependents, and those
            # may be this master's too; nobody is left to tell.
            job.master = None
        for job in jobs:
            if job.detached or job.state == GONE:
                # Detached jobs belong to no connection: they stay.  GONE ones
                # were failed just now as dependents of an earlier one.
                continue
            if job.state == RUNNING:
                self._orphan(job)
                self._forget(job, ok=False)
            else:
                self._remove_queued(job, None)

    def _remove_queued(self, job: Job, frame: dict[str, Any] | None) -> None:
        """Take a WAITING or QUEUED job out; `frame` tells its master, if any."""
        if job.state == WAITING:
            self.waiting_total -= 1
        elif job.state == QUEUED:
            queue = self.types[job.key]
            queue.queued -= 1
            if queue.queued == 0:
                queue.heap.clear()  # every entry left is dead
            elif len(queue.heap) > 64 and len(queue.heap) > 2 * queue.queued:
                queue.heap = [entry for entry in queue.heap if entry[2].state == QUEUED]
                heapq.heapify(queue.heap)
            self._forget_if_empty(queue)
        self.queued_total -= 1
        job.state = GONE
        if frame is not None:
            self._finish(job, frame, ok=False)
        else:
            self._forget(job, ok=False)

    # ------------------------------------------------------------ endings

    def _orphan(self, job: Job) -> None:
        """A running job nobody waits for any more; its slave keeps it until it answers."""
        job.state = GONE
        queue = self.types[job.key]
        queue.running -= 1
        self._forget_if_empty(queue)

    def _fail_job(self, job: Job, category: str, dependency: JobId | None = None) -> None:
        """End, with `job_failed`, a job that no slave is working on for it.

        A DEPENDENCY failure names the job in `after` that failed, so the
        master can tell which one (myjobs' `dependency_failure`).
        """
        if dependency is None:
            frame = job_failed(job.id, category)
        else:
            frame = job_failed(job.id, category, dependency=dependency)
        if job.state == WAITING or job.state == QUEUED:
            self._remove_queued(job, frame)
        else:
            self._finish(job, frame, ok=False)

    def _finish(self, job: Job, frame: bytes | dict[str, Any], *, ok: bool) -> None:
        """Answer the job's master and free its id; then release its dependents."""
        if job.detached and type(frame) is not bytes:  # (rare: `detached` first)
            frame = encode_frame(frame)  # once, for the master and the store
        job.state = GONE
        if job.master is not None:
            self._tell_master(job, frame)
            job.master = None
        if job.detached:
            self._store_result(job.id, frame)  # type: ignore[arg-type]
        self._forget(job, ok=ok)

    def _forget(self, job: Job, *, ok: bool) -> None:
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
        self._record_outcome(job.id, ok)
        dependents = job.dependents
        if not dependents:
            return
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
                    self.queued_total -= 1  # _enqueue counts it again if it queues
                    self.waiting_total -= 1
                    self._enqueue(dependent)
            else:
                self._fail_job(dependent, "DEPENDENCY", job.id)

    def _forget_if_empty(self, queue: TypeQueue) -> None:
        if queue.is_empty() and self.types.get(queue.key) is queue:
            del self.types[queue.key]

    # ------------------------------------------------------------ time

    def next_deadline(self) -> float:
        """When `tick` next has something to do (inf if never).

        The caller (the timer) sleeps until then, so it needs waking only for
        an earlier deadline: see `timers_changed`.
        """
        self.timers_changed = False
        deadline = INF
        if self._timeouts:
            deadline = self._timeouts[0][0]
        for store in (self._results, self._outcomes):
            if store:
                first = next(iter(store.values()))[0]
                deadline = min(deadline, first)
        self._timer_at = deadline
        return deadline

    def _arm(self, when: float) -> None:
        if when < self._timer_at:
            self.timers_changed = True

    def _push_timeout(self, job: Job) -> None:
        timeouts = self._timeouts
        if len(timeouts) >= self._timeouts_cap:
            # In place: `tick` may be iterating this very list.
            timeouts[:] = [e for e in timeouts if e[2].state == RUNNING and e[2].deadline == e[0]]
            heapq.heapify(timeouts)
            self._timeouts_cap = max(_TIMEOUTS_MIN, 2 * len(timeouts))
        heapq.heappush(timeouts, (job.deadline, job.seq, job))
        self._arm(job.deadline)

    def tick(self, now: float) -> None:
        """Fire job timeouts and expire stored results that are due."""
        timeouts = self._timeouts
        while timeouts and timeouts[0][0] <= now:
            deadline, _, job = heapq.heappop(timeouts)
            if job.state == RUNNING and job.deadline == deadline:
                failed = job_failed(job.id, "TIMEOUT")
                master = job.master
                self._orphan(job)
                self.totals["failed"] += 1
                if master is None or self._may_log(master):
                    log.info("event=failure id=%r category=TIMEOUT", job.id)
                self._finish(job, failed, ok=False)
        results = self._results
        while results:
            key, (expires, stored) = next(iter(results.items()))
            if expires > now:
                break
            del results[key]
            self.result_bytes -= len(stored) + STORE_ENTRY_BYTES
        outcomes = self._outcomes
        while outcomes:
            key, (expires, _) = next(iter(outcomes.items()))
            if expires > now:
                break
            del outcomes[key]
            self.outcome_bytes -= _id_bytes(key)

    def _store_result(self, job_id: JobId, frame: bytes) -> None:
        store = self._results
        old = store.pop(job_id, None)
        if old is not None:
            self.result_bytes -= len(old[1]) + STORE_ENTRY_BYTES
        expires = self._clock() + self.limits.result_ttl
        store[job_id] = (expires, frame)
        self.result_bytes += len(frame) + STORE_ENTRY_BYTES
        limits = self.limits
        while len(store) > limits.max_results or self.result_bytes > limits.max_result_bytes:
            _, (_, dropped) = store.popitem(last=False)  # the oldest first
            self.result_bytes -= len(dropped) + STORE_ENTRY_BYTES
        self._arm(expires)

    def _record_outcome(self, job_id: JobId, ok: bool) -> None:
        store = self._outcomes
        limits = self.limits
        # `_id_bytes`, inlined: every job ends here.
        if type(job_id) is str:
            size = len(job_id) + STORE_ENTRY_BYTES
        else:
            size = job_id.bit_length() // 8 + STORE_ENTRY_BYTES  # type: ignore[union-attr]
        total = self.outcome_bytes + size
        if store.pop(job_id, None) is not None:
            total -= size
        expires = self._clock() + limits.result_ttl
        store[job_id] = (expires, ok)
        self._arm(expires)
        while len(store) > limits.max_results or total > limits.max_outcome_bytes:
            dropped, _ = store.popitem(last=False)
            total -= _id_bytes(dropped)
        self.outcome_bytes = total

    def _may_log(self, peer: Peer) -> bool:
        """May `peer` cause one more log line now?  (See `LogBudget`.)"""
        limits = self.limits
        return peer.logs.allow(self._clock(), limits.log_rate, limits.log_burst, peer.name)

    # ------------------------------------------------------------ shutdown & stats

    def halt(self) -> int:
        """The daemon is stopping: answer every unanswered job with HALTED.

        Queues are emptied so no slave gets new work, running jobs become
        orphans (a late respond is acked and dropped), and later submits are
        refused the same way.  Returns how many jobs were failed.
        """
        self.halted = True
        count = 0
        for master in [*self.masters, *self.internal]:
            for job in list(master.jobs.values()):
                self.send(master, job_failed(job.id, "HALTED"))
                count += 1
            master.jobs.clear()
        for job in self.jobs.values():
            job.state = GONE
            job.master = None
        self.jobs.clear()
        for queue in self.types.values():
            queue.heap.clear()
            queue.queued = queue.running = 0
        self.queued_total = 0
        self.waiting_total = 0
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
        if request.key is not None:
            queue = queues.get(request.key)
            rows = [] if queue is None else [_row(queue)]
        elif len(queues) <= self.limits.max_stats_types:
            rows = [_row(q) for q in queues.values()]
        else:
            rows = [_row(q) for q in itertools.islice(queues.values(), self.limits.max_stats_types)]
            omitted = {
                "types": len(queues) - len(rows),
                "queued": self.queued_total - self.waiting_total,
                "running": len(self.jobs) - self.queued_total,
                "slaves": self.joined,
                "idle": self.idle_total,
            }
            for row in rows:
                for name in ("queued", "running", "slaves", "idle"):
                    omitted[name] -= row[name]
        answer: dict[str, Any] = {"types": rows}
        if omitted is not None:
            answer["types_omitted"] = omitted
        answer["totals"] = dict(self.totals)
        answer["waiting"] = self.waiting_total
        answer["connections"] = {"masters": len(self.masters), "slaves": len(self.slaves)}
        answer["uptime_s"] = round(self._clock() - self.started, 3)
        return answer


def _row(queue: TypeQueue) -> dict[str, Any]:
    return {
        "type": queue.type,
        "queued": queue.queued,
        "running": queue.running,
        "slaves": queue.slaves,
        "idle": len(queue.idle),
    }


def _id_bytes(job_id: JobId) -> int:
    """What an outcome entry costs, for the byte cap: the id and the entry."""
    if isinstance(job_id, str):
        return len(job_id) + STORE_ENTRY_BYTES
    return job_id.bit_length() // 8 + STORE_ENTRY_BYTES


def _queue_order(job: Job) -> tuple[int, int]:
    return (-job.priority, job.seq)


def _zero_clock() -> float:
    return 0.0


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iter_frames(outbox: Iterable[bytes | dict[str, Any]]) -> Iterable[bytes]:
    """Encode an outbox as wire frames (tests and the server share this)."""
    for item in outbox:
        yield item if type(item) is bytes else encode_frame(item)
