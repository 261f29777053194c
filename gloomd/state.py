"""What the broker holds: jobs, types' queues, the logs that list them, and peers.

Everything a job is lives on its `Job` object, in plain fields: its place in
line (`seq`), its delay deadline (`ready_at`), its timeout deadline, its
retries, its listeners, its failure frame once dead.  The heaps and logs
only *order* jobs and may hold stale entries (a job that has moved on is
skipped when its entry comes up); no fact about a job lives only in one of
them.  So a job serializes to a record from its own fields (see `Job`), which
is what the journal needs, and the heaps can be rebuilt from the jobs.

States (lifecycle.md "States"), and what `jobs` calls them:

    WAITING  on the jobs in its `after`                       "waiting"
    DELAYED  until `ready_at` (a `delay`, or a retry's back-off) "delayed"
    QUEUED   in its type's heap                               "queued"
    RUNNING  held by exactly one slave                        "running"
    DEAD     a detached job that failed, kept to be kicked     "dead"
    GONE     answered or removed (only an orphan's slave still holds it)
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from . import messages as m
from .counters import TypeTally
from .logs import LogBudget

if TYPE_CHECKING:
    from collections import deque

    from .messages import MasterRequest

__all__ = [
    "DEAD",
    "DELAYED",
    "DICT_FRAME_BYTES",
    "GONE",
    "QUEUED",
    "RUNNING",
    "STATE_NAMES",
    "WAITING",
    "Job",
    "JobId",
    "JobLog",
    "JobRare",
    "MasterPeer",
    "Peer",
    "SlavePeer",
    "TypeQueue",
]

JobId = str | int

# Job states.  QUEUED, RUNNING and GONE keep their old numbers.
WAITING: Final = 0
QUEUED: Final = 1
RUNNING: Final = 2
GONE: Final = 3
DELAYED: Final = 4
DEAD: Final = 5

#: What `jobs` and `stats` call each state a job can be listed in.
STATE_NAMES: Final = {
    WAITING: "waiting",
    QUEUED: "queued",
    RUNNING: "running",
    DELAYED: "delayed",
    DEAD: "dead",
}


#: A job's own fields (`Job.retry_copy` copies them all: compiled by mypyc, a
#: class cannot read its own `__slots__`).
_JOB_FIELDS: Final = (
    "accepted",
    "attempt",
    "body",
    "deadline",
    "detached",
    "id",
    "key",
    "master",
    "priority",
    "rare",
    "seq",
    "stamp",
    "state",
    "tally",
    "timeout",
    "type",
)


class JobRare:
    """The fields of a job that most jobs never set, in one object made on the
    first write that needs it: a queued job without retries, delay, `after`,
    other listeners or a death holds 72 B less (issue 20: memory per queued
    job grew by about 200 B with the lifecycle's fields).  `Job` reads and
    writes them through properties, so no caller knows where they live.
    """

    __slots__ = (
        "backoff",
        "dependents",
        "final",
        "losses",
        "mark",
        "others",
        "ready_at",
        "retried",
        "retries",
        "waiting",
    )

    def __init__(self) -> None:
        self.others: list[MasterPeer] | None = None
        self.retries: int | None = None
        self.retried = 0
        self.backoff: float | None = None
        self.losses = 0
        self.mark = 0
        self.ready_at = 0.0
        self.final: bytes | None = None
        self.waiting = 0
        self.dependents: list[Job] | None = None

    def copy(self) -> JobRare:
        twin = JobRare()
        twin.others = self.others
        twin.retries = self.retries
        twin.retried = self.retried
        twin.backoff = self.backoff
        twin.losses = self.losses
        twin.mark = self.mark
        twin.ready_at = self.ready_at
        twin.final = self.final
        twin.waiting = self.waiting
        twin.dependents = self.dependents
        return twin


class Job:
    """One accepted job.

    A journal record of a job holds these fields and nothing else: id,
    type, priority, body, detached, timeout, state, seq, attempt, losses,
    retries, retried, backoff, accepted (wall clock), ready_at (as a wall
    clock deadline), mark, final (a dead job's failure frame), and the ids
    of its `dependents` (its `waiting` count follows from theirs).
    `deadline`, `stamp`, `tally` and the listeners belong to a running
    daemon: a restart requeues running jobs and closes every connection.
    """

    __slots__ = _JOB_FIELDS

    def __init__(
        self, msg: m.Submit, seq: int, master: MasterPeer | None, accepted: float, queue: TypeQueue
    ) -> None:
        self.id = msg.id
        # The queue's key and, for a string type (its own key), its type:
        # one string per type, not one per queued job (56 B a job for
        # "echo", issue 20).  Any other type is kept as this submit spelled
        # it (its key is canonical JSON, which two spellings can share).
        key = msg.key
        self.type = queue.type if type(key) is str else msg.type
        self.key = queue.key
        self.priority = msg.priority
        self.body = msg.body
        self.seq = seq
        #: The first master waiting for its answer, then the others (`gloomd.attach`).
        self.master = master
        self.detached = msg.detach
        self.timeout = msg.timeout
        #: Deliveries so far (a job frame says `attempt` + 1).
        self.attempt = 0
        self.state = WAITING
        #: Wall-clock seconds at acceptance (`age_s`).
        self.accepted = accepted
        #: Monotonic: when it became ready (QUEUED), then when a slave took it.
        self.stamp = 0.0
        #: Monotonic: a running job's timeout deadline.
        self.deadline = 0.0
        #: Its type's counters (`gloomd.counters`).
        self.tally = queue.tally
        #: The fields below (properties) when one was set: see `JobRare`.
        self.rare: JobRare | None = None
        if msg.retries is not None or msg.backoff is not None:
            rare = self.rare = JobRare()
            rare.retries = msg.retries
            rare.backoff = msg.backoff

    def _rare(self) -> JobRare:
        rare = self.rare
        if rare is None:
            rare = self.rare = JobRare()
        return rare

    # The rare fields.  A write of a field's default where none was set
    # makes no `JobRare` (`job.others = None` ends every answered job).

    @property
    def others(self) -> list[MasterPeer] | None:
        """Masters waiting for its answer besides `master` (`gloomd.attach`)."""
        rare = self.rare
        return None if rare is None else rare.others

    @others.setter
    def others(self, value: list[MasterPeer] | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().others = value

    @property
    def retries(self) -> int | None:
        """Retries asked for; None when the submit had no `retries` (its
        failure frames then carry no `attempt`, as before the lifecycle)."""
        rare = self.rare
        return None if rare is None else rare.retries

    @retries.setter
    def retries(self, value: int | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().retries = value

    @property
    def retried(self) -> int:
        rare = self.rare
        return 0 if rare is None else rare.retried

    @retried.setter
    def retried(self, value: int) -> None:
        if value or self.rare is not None:
            self._rare().retried = value

    @property
    def backoff(self) -> float | None:
        rare = self.rare
        return None if rare is None else rare.backoff

    @backoff.setter
    def backoff(self, value: float | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().backoff = value

    @property
    def losses(self) -> int:
        """Slaves lost while holding it (`--max-retries`, CRASH)."""
        rare = self.rare
        return 0 if rare is None else rare.losses

    @losses.setter
    def losses(self, value: int) -> None:
        if value or self.rare is not None:
            self._rare().losses = value

    @property
    def mark(self) -> int:
        """Its entry's key in the log of its state (delayed, waiting, dead)."""
        rare = self.rare
        return 0 if rare is None else rare.mark

    @mark.setter
    def mark(self, value: int) -> None:
        if value or self.rare is not None:
            self._rare().mark = value

    @property
    def ready_at(self) -> float:
        """Monotonic: when a DELAYED job becomes ready (0.0: no delay pending)."""
        rare = self.rare
        return 0.0 if rare is None else rare.ready_at

    @ready_at.setter
    def ready_at(self, value: float) -> None:
        if value or self.rare is not None:
            self._rare().ready_at = value

    @property
    def final(self) -> bytes | None:
        """A dead job's failure frame, encoded: what `result` answers."""
        rare = self.rare
        return None if rare is None else rare.final

    @final.setter
    def final(self, value: bytes | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().final = value

    @property
    def waiting(self) -> int:
        """Jobs in `after` not yet completed."""
        rare = self.rare
        return 0 if rare is None else rare.waiting

    @waiting.setter
    def waiting(self, value: int) -> None:
        if value or self.rare is not None:
            self._rare().waiting = value

    @property
    def dependents(self) -> list[Job] | None:
        rare = self.rare
        return None if rare is None else rare.dependents

    @dependents.setter
    def dependents(self, value: list[Job] | None) -> None:
        if value is not None or self.rare is not None:
            self._rare().dependents = value

    def retry_copy(self, queue: TypeQueue) -> Job:
        """A copy that carries on, for a job that timed out and will be retried
        or kept dead (a kick would bring it back to life).

        The slave that timed out still holds the original (an orphan: its late
        answer is acked and dropped), so the job that goes on must be another
        object.  The caller moves the registrations (ids, masters).
        """
        # Through `__init__`: compiled by mypyc, `Job.__new__(Job)` runs it
        # too (a native class's tp_new does), without its arguments.
        msg = m.Submit(self.id, self.type, self.key, self.priority, self.body)
        copy = Job(msg, self.seq, self.master, self.accepted, queue)
        for name in _JOB_FIELDS:
            setattr(copy, name, getattr(self, name))
        if self.rare is not None:
            copy.rare = self.rare.copy()  # the orphan's writes must not reach the copy
        return copy


class JobLog:
    """Jobs of one type in one state, sorted by a key, for `jobs` and kicks.

    Entries are tuples whose item `kx` is the key and whose last item is the
    job; they are appended in key order (keys grow: a new `seq` or `mark`) or,
    for the rare older key (a requeued job keeps its `seq`), inserted in
    place.  Entries are never removed one by one: an entry is *live* while its
    job is still in that state under that key (`alive`), stale entries are
    skipped, and `compact` drops them once they outnumber the live ones
    (amortised O(1) per entry).  `head` is where the live entries may start.
    """

    __slots__ = ("entries", "head", "kx")

    def __init__(self, kx: int) -> None:
        self.entries: list[tuple[Any, ...]] = []
        self.head = 0
        self.kx = kx

    def __len__(self) -> int:
        """Entries held, stale ones included (what compaction weighs)."""
        return len(self.entries) - self.head

    def add(self, entry: tuple[Any, ...]) -> bool:
        """Add an entry in key order; False if that very entry is already here."""
        entries = self.entries
        kx = self.kx
        key = entry[kx]
        if len(entries) == self.head or entries[-1][kx] < key:
            entries.append(entry)
            return True
        at = bisect_right(entries, key, lo=self.head, key=itemgetter(kx))
        if at > self.head and entries[at - 1][kx] == key and entries[at - 1][-1] is entry[-1]:
            return False  # still here from before (a requeue keeps its seq)
        entries.insert(at, entry)
        return True

    def after(self, key: int | None) -> int:
        """Index of the first entry whose key is greater than `key` (None: the first)."""
        if key is None:
            return self.head
        return bisect_right(self.entries, key, lo=self.head, key=itemgetter(self.kx))

    def compact(self, alive: Callable[[tuple[Any, ...]], bool]) -> int:
        """Drop stale entries; returns how many are left."""
        live = [entry for entry in self.entries[self.head :] if alive(entry)]
        self.entries = live
        self.head = 0
        return len(live)

    def trim(self, alive: Callable[[tuple[Any, ...]], bool]) -> None:
        """Move `head` past stale entries at the front (kicks take the oldest)."""
        entries = self.entries
        head = self.head
        while head < len(entries) and not alive(entries[head]):
            head += 1
        if head > 64 and head * 2 > len(entries):
            del entries[:head]
            head = 0
        self.head = head

    def live(self, alive: Callable[[tuple[Any, ...]], bool]) -> Iterator[Any]:
        """The live jobs, in key order (a generator over a list that may change:
        callers stop before they change the log)."""
        for entry in self.entries[self.head :]:
            if alive(entry):
                yield entry[-1]


def queued_alive(entry: tuple[Any, ...]) -> bool:
    """A lane entry `(-priority, seq, job)` is live while the job is QUEUED with that seq."""
    job: Job = entry[2]
    return job.state == QUEUED and job.seq == entry[1]


def _state_alive(state: int) -> Callable[[tuple[Any, ...]], bool]:
    def alive(entry: tuple[Any, ...]) -> bool:
        job: Job = entry[1]
        return job.state == state and job.mark == entry[0]

    return alive


#: Liveness of a `(mark, job)` entry in the log of each state.
STATE_ALIVE: Final = {state: _state_alive(state) for state in (DELAYED, WAITING, DEAD)}


class TypeQueue:
    """Everything about one job type: its heap, its slaves, its counts and logs.

    It exists while it holds anything (a job in any state, a slave, a pause)
    and is forgotten when empty; its counters (`tally`) outlive it.
    `serial` orders types for `jobs` across types (creation order, which is
    also the order of `Broker.types`).
    """

    __slots__ = (
        "dead",
        "delayed",
        "heap",
        "idle",
        "key",
        "lane_entries",
        "lanes",
        "logs",
        "paused",
        "prios",
        "queued",
        "running",
        "serial",
        "slaves",
        "tally",
        "type",
        "waiting",
    )

    def __init__(self, job_type: Any, key: bytes | str, serial: int, tally: TypeTally) -> None:
        self.type = job_type
        self.key = key
        self.serial = serial
        self.tally = tally
        self.heap: list[tuple[int, int, Job]] = []
        self.queued = 0  # live entries of heap
        self.running = 0  # jobs held by slaves, orphans excluded
        self.delayed = 0
        self.waiting = 0
        self.dead = 0
        self.slaves = 0
        self.paused = False
        self.idle: OrderedDict[SlavePeer, None] = OrderedDict()
        # The listing index of queued jobs (dispatch order without a sort):
        # a log per priority, keyed by seq, holding the heap's own entries;
        # `prios` holds the lanes' keys (-priority) in ascending order.
        self.lanes: dict[int, JobLog] = {}
        self.prios: list[int] = []
        self.lane_entries = 0
        # Logs of delayed, waiting and dead jobs, made when first needed.
        self.logs: dict[int, JobLog] = {}

    def is_empty(self) -> bool:
        return not (
            self.queued
            or self.running
            or self.slaves
            or self.delayed
            or self.waiting
            or self.dead
            or self.paused
        )

    def log(self, state: int) -> JobLog:
        log = self.logs.get(state)
        if log is None:
            log = self.logs[state] = JobLog(0)
        return log

    def count(self, state: int) -> int:
        if state == QUEUED:
            return self.queued
        if state == DELAYED:
            return self.delayed
        if state == WAITING:
            return self.waiting
        if state == DEAD:
            return self.dead
        return self.running


# ---------------------------------------------------------------- peers

#: What a frame queued as a dict counts toward a peer's `pending` bytes (an
#: ack with a 36-character id is 58 bytes framed).
DICT_FRAME_BYTES: Final = 64


class Peer:
    """One connection as the broker sees it: an outbox and nothing of I/O.

    `transport` belongs to the I/O layer, which uses it to find its
    connection from a dirty peer (and clears it when the connection is
    gone, so that the two do not keep each other alive); the broker never
    looks at it.
    """

    __slots__ = ("gated", "logs", "name", "outbox", "overflowed", "pending", "transport")

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
        #: Frames that wait for a durable write (`gloomd.holds`), oldest
        #: first; None while nothing waits (the flush's one check).
        self.gated: deque[Any] | None = None


class MasterPeer(Peer):
    __slots__ = ("held", "held_bytes", "jobs")

    def __init__(self, name: str, transport: Any = None) -> None:
        super().__init__(name, transport)
        self.jobs: dict[JobId, Job] = {}  # its jobs not yet answered
        #: Not None while a request of its own is being worked on over several
        #: passes (a kick of many jobs): its later requests wait here, in
        #: order, as typed requests or as the frames already owed for them
        #: (an error, a ping's ok), so that answers leave in request order.
        self.held: list[MasterRequest | bytes | dict[str, Any]] | None = None
        self.held_bytes = 0


class SlavePeer(Peer):
    __slots__ = ("job", "queue")

    def __init__(self, name: str, transport: Any = None) -> None:
        super().__init__(name, transport)
        self.queue: TypeQueue | None = None  # set by join
        self.job: Job | None = None  # held job (possibly an orphan)
