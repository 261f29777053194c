"""A hypothesis state machine against the pure Broker: random interleavings of
every action on both ports, the job lifecycle's included, checked against an
independent model.

The model predicts everything the broker owes a *master* (acks, attaches,
refusals, results, failures, progress, stats, pages of `jobs`, kicks) and
every reply owed to the slave that acted; job frames to slaves are the one
thing it observes instead of predicting (which idle slave gets which job is
policy, not contract), and it checks each one: a live, ready job of the
slave's type, not paused, held by no one else, given to a slave holding
nothing, with the right body, attempt count and timeout.

Time is two fake clocks (monotonic and wall) that only the `tick` rule moves:
delays, retries' back-offs, timeouts and result expiry all follow it.

Invariants, after every step:
  * every frame a master receives about a job answers one of its own
    unanswered jobs, or one it attached to (so no job is answered twice to
    one master, none after that master was told it was removed); at the end,
    after a drain, none is left unanswered unless its masters left or
    cancelled it;
  * no job on two slaves, at most one per slave (also read from the
    broker's own state);
  * no idle slave of a type that is not paused while a ready job of that
    type is queued;
  * the broker's totals and stats agree with the model's counters, and
    submitted = completed + failed + cancelled + withdrawn + live (issue 17);
  * once everybody disconnected, dead letters were deleted and results
    expired, nothing is left: no job, id, type, queue entry, timer, stored
    result, master or slave.

Runs `GLOOMD_FUZZ_EXAMPLES` examples (default 120, about 30 s) of up to
`GLOOMD_FUZZ_STEPS` steps (default 50); raise both for a long run.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import gloomd.broker as broker_module
from gloomd.broker import RUNNING, Broker, BrokerLimits, MasterPeer, SlavePeer, iter_frames
from gloomwire import codec
from tests.support.brokerkit import FakeClock, receive

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("GLOOMD_FUZZ_EXAMPLES", "120"))
STEPS = int(os.environ.get("GLOOMD_FUZZ_STEPS", "50"))

MAX_QUEUED = 6
MAX_RETRIES = 2
MAX_DEAD = 3
TTL = 40.0
MASTER_SLOTS = 3
SLAVE_SLOTS = 4

IDS: list[str | int] = [0, 1, 2, 3, 4, "0", "1", "x"]
TYPES = ["a", "b"]
CATEGORIES = ["ERROR", "TIMEOUT", "CRASH", "HALTED"]
STATES = ["queued", "delayed", "waiting", "running", "dead"]
#: Outcomes counted as failed in a type's row (cancelled is apart).
FAILED_OUTCOMES = ("error", "timeout", "crash", "halted", "dependency")

#: Every error name the broker may put in a frame (protocol.md).
ERROR_NAMES = {
    "invalid_json",
    "missing_field",
    "invalid_type",
    "invalid_action",
    "unknown_type",
    "unknown_action",
    "invalid_state",
    "id_exists",
    "unknown_id",
    "not_ready",
    "queue_full",
    "dependency_cycle",
    "unknown_dependency",
    "job_failed",
    "job_error",
}

ids = st.sampled_from(IDS)
types = st.sampled_from(TYPES)

# Frames each port must refuse whatever the state (the slave ones that need a
# job answer invalid_state without one, and a field error with one).
BAD_MASTER = [
    {},
    {"action": 7},
    {"action": "bogus"},
    {"action": "join", "type": "a"},
    {"action": "respond", "body": 1},
    {"action": "progress", "body": 1},
    {"action": "fail"},
    {"action": "submit"},
    {"action": "submit", "id": 1.5, "type": "a", "body": 1},
    {"action": "submit", "id": True, "type": "a", "body": 1},
    {"action": "submit", "id": 9, "body": 1},
    {"action": "submit", "id": 9, "type": "a", "priority": "5", "body": 1},
    {"action": "submit", "id": 9, "type": "a", "priority": 5.0, "body": 1},
    {"action": "submit", "id": 9, "type": "a"},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "timeout": -1},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "timeout": "5"},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "detach": "yes"},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "after": "x"},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "after": [1.5]},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "delay": -1},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "retries": 1.5},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "backoff": 0},
    {"action": "submit", "id": 9, "type": "a", "body": 1, "unique": "yes"},
    {"action": "cancel"},
    {"action": "cancel", "id": None},
    {"action": "result", "id": [1]},
    {"action": "kick"},
    {"action": "kick", "type": "a", "limit": 0},
    {"action": "delete", "id": 1.5},
    {"action": "jobs", "state": "lost"},
    {"action": "jobs", "limit": 1001},
    {"action": "jobs", "cursor": "c"},
    {"action": "pause"},
    {"action": "resume", "id": 1},
]
BAD_SLAVE = [
    {},
    {"action": 7},
    {"action": "bogus"},
    {"action": "join"},
    {"action": "submit", "id": 1, "type": "a", "body": 1},
    {"action": "cancel", "id": 1},
    {"action": "stats"},
    {"action": "result", "id": 1},
    {"action": "kick", "id": 1},
    {"action": "delete", "id": 1},
    {"action": "jobs"},
    {"action": "pause", "type": "a"},
    {"action": "resume", "type": "a"},
    {"action": "respond"},
    {"action": "progress"},
    {"action": "fail"},
    {"action": "fail", "error": "NOPE"},
    {"action": "fail", "error": 3},
]
bad_payloads = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"[]", b"1", b'"s"', b"null", b"{", b'{"action":', b"\xff\xfe"]),
)


def key(job_id: Any) -> tuple[type, Any]:
    return (type(job_id), job_id)


def canon(frame: Any) -> str:
    return json.dumps(frame, sort_keys=True)


@dataclass(eq=False)
class MJob:
    id: Any
    type: str
    body: Any
    priority: int
    seq: int
    masters: list[int]  # slots of the masters still owed an answer, the first first
    detached: bool
    timeout: float | None
    retries: int | None
    backoff: float | None
    accepted: float  # wall clock
    state: str = "queued"  # waiting | delayed | queued | running | dead | gone
    deps: set[tuple[type, Any]] = field(default_factory=set)
    dependents: list[MJob] = field(default_factory=list)
    losses: int = 0
    attempts: int = 0
    retried: int = 0
    deadline: float = 0.0
    ready_at: float = 0.0  # a delay still to run (delayed, or waiting with a delay)
    mark: int = 0  # the order it entered its state (delayed, waiting, dead)
    final: dict[str, Any] | None = None  # a dead job's failure frame


@dataclass(eq=False)
class MSlave:
    peer: SlavePeer
    type: str | None = None
    held: MJob | None = None  # possibly an orphan (state "gone")


@dataclass(eq=False)
class MMaster:
    peer: MasterPeer
    pending: dict[tuple[type, Any], MJob] = field(default_factory=dict)


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.wall = FakeClock()
        self.wall.now = 1000.0
        self.broker = self.new_broker()
        self.masters: dict[int, MMaster] = {}
        self.slaves: dict[int, MSlave] = {}
        self.live: dict[tuple[type, Any], MJob] = {}
        self.outcomes: dict[tuple[type, Any], tuple[float, bool]] = {}
        self.results: dict[tuple[type, Any], tuple[float, dict[str, Any], str]] = {}
        self.paused: set[str] = set()
        self.totals = Counter(
            {
                "submitted": 0,
                "completed": 0,
                "failed": 0,
                "requeued": 0,
                "cancelled": 0,
                "retried": 0,
                "dead": 0,
                "withdrawn": 0,
            }
        )
        self.ends: dict[str, Counter[str]] = {t: Counter() for t in TYPES}  # by outcome
        self.seq = 0
        self.marks = 0
        self.names = 0
        self.answered = 0  # answers to masters of their jobs
        # Per step: what masters are owed, by master slot (multisets of frames).
        self.expected: dict[int, list[Any]] = {}

    # ------------------------------------------------------------ plumbing

    def new_broker(self) -> Broker:
        """A broker on the machine's clocks (a restart makes another one)."""
        return Broker(
            # One stats row at most: with both types live the other is summed
            # in `types_omitted`, from the broker's running sums.
            BrokerLimits(
                max_queued=MAX_QUEUED,
                max_retries=MAX_RETRIES,
                result_ttl=TTL,
                max_stats_types=1,
                max_dead=MAX_DEAD,
            ),
            clock=self.clock,
            wall=self.wall,
        )

    def _name(self) -> str:
        self.names += 1
        return f"p{self.names}"

    def master(self, slot: int) -> MMaster:
        if slot not in self.masters:
            self.masters[slot] = MMaster(self.broker.connect_master(self._name()))
        return self.masters[slot]

    def slave(self, slot: int) -> MSlave:
        """The slave in `slot`; a new one joins a type at once (as real slaves do),
        so that random runs spend their steps on work rather than on idle peers."""
        if slot not in self.slaves:
            self.slaves[slot] = MSlave(self.broker.connect_slave(self._name()))
            self.join(slot, TYPES[slot % len(TYPES)])
        return self.slaves[slot]

    def send(self, peer: Any, obj: Any) -> None:
        receive(self.broker, peer, codec.dumps(obj))

    @staticmethod
    def take(peer: Any) -> list[Any]:
        frames = [codec.loads(f[4:]) for f in iter_frames(peer.outbox)]
        peer.outbox.clear()
        peer.pending = 0
        return frames

    def owe(self, slot: int | None, frame: Any) -> None:
        if slot is not None and slot in self.masters:
            self.expected.setdefault(slot, []).append(frame)

    def reply(self, slot: int, frame: Any) -> None:
        self.expected.setdefault(slot, []).insert(0, frame)

    def finish_step(self, *, acting_slave: MSlave | None = None, slave_reply: Any = None) -> None:
        """Check every outbox against the model, then clear them."""
        # Masters: exactly the frames the model says they are owed.
        for slot, master in self.masters.items():
            got = sorted(map(canon, self.take(master.peer)))
            want = sorted(map(canon, self.expected.get(slot, [])))
            assert got == want, (slot, got, want)
        self.expected = {}
        # Slaves: the acting one's reply first, then at most one job each.
        dispatched: list[tuple[MSlave, dict[str, Any]]] = []
        for slave in self.slaves.values():
            frames = self.take(slave.peer)
            if slave is acting_slave and slave_reply is not None:
                assert frames and frames[0] == slave_reply, (frames, slave_reply)
                frames = frames[1:]
            assert len(frames) <= 1, frames
            for frame in frames:
                assert frame.get("action") == "job", frame
                dispatched.append((slave, frame))
        self.broker.dirty.clear()
        only = len(dispatched) == 1 and dispatched[0][0] is acting_slave
        for slave, frame in dispatched:
            self.observe_dispatch(slave, frame, check_order=only)

    def observe_dispatch(self, slave: MSlave, frame: dict[str, Any], check_order: bool) -> None:
        job = self.live.get(key(frame["id"]))
        assert job is not None and job.state == "queued", frame  # live and ready
        assert job.type not in self.paused, frame
        assert slave.held is None and slave.type == job.type, (frame, slave.held)
        assert frame["type"] == job.type and frame["body"] == job.body
        assert not any(s.held is job for s in self.slaves.values())
        if check_order:
            # A slave that picked from its queue took the best ready job.
            best = max(
                (j for j in self.live.values() if j.state == "queued" and j.type == job.type),
                key=lambda j: (j.priority, -j.seq),
            )
            assert best is job, (frame, best.id)
        job.attempts += 1
        # `attempt` only on a redelivery: a missing one reads as 1.
        if job.attempts == 1:
            assert "attempt" not in frame, frame
        else:
            assert frame["attempt"] == job.attempts
        if job.timeout is None:
            assert "timeout" not in frame
        else:
            assert frame["timeout"] == job.timeout
            job.deadline = self.clock.now + job.timeout
        job.state = "running"
        slave.held = job

    # ------------------------------------------------------------ model endings

    def next_mark(self) -> int:
        self.marks += 1
        return self.marks

    def tell(self, job: MJob, frame: dict[str, Any]) -> None:
        """Every master of the job is answered with `frame`."""
        for slot in job.masters:
            master = self.masters.get(slot)
            if master is not None:
                del master.pending[key(job.id)]
                self.owe(slot, frame)
                self.answered += 1
        job.masters = []

    def end(self, job: MJob, frame: dict[str, Any], ok: bool) -> None:
        """The job is answered with `frame` (to its masters, if still there)."""
        job.state = "gone"
        self.tell(job, frame)
        if job.detached:
            self.results[key(job.id)] = (self.clock.now + TTL, frame, job.type)
        self.forget(job, ok)

    def forget(self, job: MJob, ok: bool) -> None:
        job.state = "gone"
        self.live.pop(key(job.id), None)
        self.settle(job, ok)

    def settle(self, job: MJob, ok: bool) -> None:
        self.outcomes[key(job.id)] = (self.clock.now + TTL, ok)
        dependents, job.dependents = job.dependents, []
        for dep in dependents:
            if dep.state != "waiting":
                continue
            if ok:
                dep.deps.discard(key(job.id))
                if not dep.deps:
                    self.released(dep)
            else:
                self.fail(dep, failed(dep.id, "DEPENDENCY", dependency=job.id), "dependency")

    def released(self, job: MJob) -> None:
        if job.ready_at > self.clock.now:
            job.state = "delayed"
            job.mark = self.next_mark()
        else:
            if job.ready_at:
                job.ready_at = 0.0
                self.new_seq(job)
            job.state = "queued"

    def new_seq(self, job: MJob) -> None:
        self.seq += 1
        job.seq = self.seq

    def with_attempt(self, job: MJob, frame: dict[str, Any]) -> dict[str, Any]:
        if job.retries is not None:
            frame["attempt"] = job.attempts
        return frame

    def fail(self, job: MJob, frame: dict[str, Any], outcome: str) -> None:
        """A final failure: a detached job is buried (dead), any other ends."""
        self.with_attempt(job, frame)
        if not job.masters and not job.detached:
            self.totals["withdrawn"] += 1  # its last master just left
        else:
            self.totals["failed"] += 1
            self.ends[job.type][outcome] += 1
        if job.detached:
            self.bury(job, frame)
        else:
            self.end(job, frame, ok=False)

    def bury(self, job: MJob, frame: dict[str, Any]) -> None:
        job.state = "dead"
        job.final = frame
        job.mark = self.next_mark()
        self.totals["dead"] += 1
        self.tell(job, frame)
        self.settle(job, ok=False)
        dead = sorted((j for j in self.live.values() if j.state == "dead"), key=lambda j: j.mark)
        for oldest in dead[: max(0, len(dead) - MAX_DEAD)]:
            oldest.state = "gone"
            del self.live[key(oldest.id)]

    def retry(self, job: MJob) -> None:
        job.retried += 1
        backoff = 1.0 if job.backoff is None else job.backoff
        wait = min(backoff * 2.0 ** (job.retried - 1), 3600.0)
        self.totals["retried"] += 1
        job.state = "delayed"
        job.ready_at = self.clock.now + wait
        job.mark = self.next_mark()

    def retries_left(self, job: MJob) -> bool:
        return job.retries is not None and job.retried < job.retries

    def queued_total(self) -> int:
        return sum(1 for j in self.live.values() if j.state in ("waiting", "delayed", "queued"))

    def live_jobs(self) -> int:
        return sum(1 for j in self.live.values() if j.state != "dead")

    # ------------------------------------------------------------ master rules

    @rule(
        slot=st.integers(0, MASTER_SLOTS - 1),
        job_id=ids,
        job_type=types,
        priority=st.integers(-2, 2),
        timeout=st.one_of(st.none(), st.sampled_from([1, 2.5, 10])),
        detach=st.booleans(),
        after=st.one_of(st.none(), st.none(), st.none(), st.lists(ids, min_size=1, max_size=2)),
        delay=st.sampled_from([None, None, None, 0, 2, 5.5]),
        retries=st.sampled_from([None, None, 0, 1, 3]),
        backoff=st.sampled_from([None, 0.5, 4]),
        unique=st.sampled_from([False, False, True]),
    )
    def submit(
        self,
        slot: int,
        job_id: Any,
        job_type: str,
        priority: int,
        timeout: Any,
        detach: bool,
        after: list[Any] | None,
        delay: Any,
        retries: Any,
        backoff: Any,
        unique: bool,
    ) -> None:
        master = self.master(slot)
        self.seq += 1
        body = {"n": self.seq}
        msg: dict[str, Any] = {
            "action": "submit",
            "id": job_id,
            "type": job_type,
            "priority": priority,
            "body": body,
        }
        for name, value in (("timeout", timeout), ("after", after), ("delay", delay),
                            ("retries", retries), ("backoff", backoff)):  # fmt: skip
            if value is not None:
                msg[name] = value
        if detach:
            msg["detach"] = True
        if unique:
            msg["unique"] = True
        replies = self.predict_submit(slot, msg)
        self.send(master.peer, msg)
        for frame in reversed(replies):
            self.reply(slot, frame)
        self.finish_step()

    # Registered twice: submitting is what gives every other rule something to do.
    submit_more = submit

    def predict_submit(self, slot: int, msg: dict[str, Any]) -> list[dict[str, Any]]:
        job_id, job_type = msg["id"], msg["type"]
        live = self.live.get(key(job_id))
        if live is not None:
            if msg.get("unique") and live.type == job_type:
                if live.state == "dead":
                    assert live.final is not None
                    return [attached(job_id), live.final]
                if slot not in live.masters:
                    live.masters.append(slot)
                    self.masters[slot].pending[key(job_id)] = live
                return [attached(job_id)]
            return [{"error": "id_exists", "reason": job_id}]
        stored = self.results.get(key(job_id))
        if msg.get("unique") and stored is not None:
            if stored[2] == job_type:
                return [attached(job_id), stored[1]]
            return [{"error": "id_exists", "reason": job_id}]
        waiting_on: list[MJob] = []
        failed_dep: Any = None
        for dep in msg.get("after", []):
            if key(dep) == key(job_id):
                return [{"error": "dependency_cycle", "reason": dep}]
            held = self.live.get(key(dep))
            if held is not None:
                if held.state == "dead":
                    if failed_dep is None:
                        failed_dep = dep
                else:
                    waiting_on.append(held)
                continue
            outcome = self.outcomes.get(key(dep))
            if outcome is None:
                return [{"error": "unknown_dependency", "reason": dep}]
            if not outcome[1] and failed_dep is None:
                failed_dep = dep
        if self.queued_total() >= MAX_QUEUED:
            return [{"error": "queue_full", "reason": job_id}]
        job = MJob(
            job_id, job_type, msg["body"], msg["priority"], self.seq, [slot],
            bool(msg.get("detach")), msg.get("timeout"), msg.get("retries"), msg.get("backoff"),
            self.wall.now,
        )  # fmt: skip
        self.live[key(job_id)] = job
        self.masters[slot].pending[key(job_id)] = job
        self.totals["submitted"] += 1
        delay = msg.get("delay")
        if failed_dep is not None:
            self.fail(job, failed(job_id, "DEPENDENCY", dependency=failed_dep), "dependency")
        elif waiting_on:
            job.state = "waiting"
            job.mark = self.next_mark()
            if delay:
                job.ready_at = self.clock.now + delay
            for dep in waiting_on:
                job.deps.add(key(dep.id))
                dep.dependents.append(job)
        elif delay:
            job.state = "delayed"
            job.ready_at = self.clock.now + delay
            job.mark = self.next_mark()
        return [{"ok": True, "id": job_id}]

    def cancel_or_delete(self, slot: int, job_id: Any, action: str) -> None:
        master = self.master(slot)
        job = self.live.get(key(job_id))
        if job is None or not (slot in job.masters or job.detached):
            reply: dict[str, Any] = {"error": "unknown_id", "reason": job_id}
        elif job.state == "running" or (job.state == "dead" and action == "cancel"):
            reply = {"error": "invalid_state", "reason": job.state}
        elif job.state == "dead":
            reply = {"ok": True, "id": job_id}
            job.state = "gone"
            del self.live[key(job_id)]
        else:
            reply = {"ok": True, "id": job_id}
            self.totals["cancelled"] += 1
            if slot in job.masters:
                job.masters.remove(slot)
                del master.pending[key(job_id)]  # the ack is its answer
                self.answered += 1
            self.end(job, self.with_attempt(job, failed(job_id, "CANCELLED")), ok=False)
        self.send(master.peer, {"action": action, "id": job_id})
        self.reply(slot, reply)
        self.finish_step()

    @rule(slot=st.integers(0, MASTER_SLOTS - 1), job_id=ids)
    def cancel(self, slot: int, job_id: Any) -> None:
        self.cancel_or_delete(slot, job_id, "cancel")

    @rule(slot=st.integers(0, MASTER_SLOTS - 1), job_id=ids)
    def delete(self, slot: int, job_id: Any) -> None:
        self.cancel_or_delete(slot, job_id, "delete")

    @rule(slot=st.integers(0, MASTER_SLOTS - 1), job_id=ids)
    def result(self, slot: int, job_id: Any) -> None:
        master = self.master(slot)
        stored = self.results.get(key(job_id))
        job = self.live.get(key(job_id))
        if stored is not None:
            reply = stored[1]
        elif job is not None and (job.detached or slot in job.masters):
            if job.state == "dead":
                reply = job.final
            else:
                reply = {"error": "not_ready", "reason": job_id}
        else:
            reply = {"error": "unknown_id", "reason": job_id}
        self.send(master.peer, {"action": "result", "id": job_id})
        self.owe(slot, reply)
        self.finish_step()

    def revive(self, job: MJob) -> None:
        job.state = "queued"
        job.final = None
        job.retried = 0
        job.losses = 0
        if job.retries is None:
            job.retries = 0
        self.new_seq(job)
        self.totals["submitted"] += 1

    @rule(slot=st.integers(0, MASTER_SLOTS - 1), job_id=ids)
    def kick(self, slot: int, job_id: Any) -> None:
        master = self.master(slot)
        job = self.live.get(key(job_id))
        if job is None:
            reply: dict[str, Any] = {"error": "unknown_id", "reason": job_id}
        elif job.state != "dead":
            reply = {"error": "invalid_state", "reason": job.state}
        else:
            reply = {"ok": True, "id": job_id}
            self.revive(job)
        self.send(master.peer, {"action": "kick", "id": job_id})
        self.reply(slot, reply)
        self.finish_step()

    @rule(
        slot=st.integers(0, MASTER_SLOTS - 1),
        job_type=types,
        limit=st.sampled_from([None, 1, 2, 50]),
    )
    def kick_type(self, slot: int, job_type: str, limit: int | None) -> None:
        master = self.master(slot)
        dead = sorted(
            (j for j in self.live.values() if j.state == "dead" and j.type == job_type),
            key=lambda j: j.mark,
        )
        chosen = dead if limit is None else dead[:limit]
        for job in chosen:
            self.revive(job)
        frame: dict[str, Any] = {"action": "kick", "type": job_type}
        if limit is not None:
            frame["limit"] = limit
        self.send(master.peer, frame)
        self.reply(slot, {"ok": True, "kicked": len(chosen)})
        self.finish_step()

    @rule(
        slot=st.integers(0, MASTER_SLOTS - 1),
        other=st.integers(0, MASTER_SLOTS - 1),
        job_type=types,
        limit=st.sampled_from([None, 2, 50]),
        meddle=st.sampled_from(["ping", "kick_same", "delete", "kick", "leave", "stats"]),
    )
    def kick_type_in_passes(
        self, slot: int, other: int, job_type: str, limit: int | None, meddle: str
    ) -> None:
        """A kick by type done one job per pass of the loop (KICK_CHUNK 1), with
        something happening between its passes: another master deletes or kicks
        one of the jobs it has yet to reach, the kicking master sends more (held
        behind the kick, answered after it, in order) or leaves (the kick goes on).

        The kick takes, pass by pass, the oldest job still dead among those dead
        when it was asked for, up to `limit` of them."""
        candidates = sorted(
            (j for j in self.live.values() if j.state == "dead" and j.type == job_type),
            key=lambda j: j.mark,
        )
        want = len(candidates) if limit is None else min(limit, len(candidates))
        if want < 2:
            return  # done in one pass: the kick_type rule's case
        event(f"kick in passes, meanwhile: {meddle}")  # (--hypothesis-show-statistics)
        master = self.master(slot)
        done = 0

        def one_pass() -> None:
            nonlocal done
            while candidates and done < want:
                job = candidates.pop(0)
                if job.state == "dead":
                    self.revive(job)
                    done += 1
                    return

        frame: dict[str, Any] = {"action": "kick", "type": job_type}
        if limit is not None:
            frame["limit"] = limit
        with mock.patch.object(broker_module, "KICK_CHUNK", 1):
            self.send(master.peer, frame)
            one_pass()  # the first pass, at once; no answer yet
            self.finish_step()
            held: dict[str, Any] | None = None
            target = candidates[-1]  # still dead: the kick has not reached it
            if meddle == "ping":
                held = {"action": "ping"}
            elif meddle == "stats":
                held = {"action": "stats", "type": "no such type"}
            elif meddle == "kick_same":
                held = {"action": "kick", "id": target.id}
            elif meddle == "leave":
                self.master_leaves(slot)
            elif other != slot:
                (self.delete if meddle == "delete" else self.kick)(other, target.id)
            if held is not None:
                self.send(master.peer, held)
                self.finish_step()  # held: nothing for the kicking master yet
            passes = 0
            while self.broker.next_deadline() == float("-inf"):
                passes += 1
                assert passes <= want + 1, passes  # one job a pass
                self.broker.tick(self.clock.now)
                one_pass()
        got = self.take(master.peer) if slot in self.masters else []
        # The answers arrive once the kick is done, the kick's first.
        self.finish_step()  # observes the revived jobs' dispatch
        if slot not in self.masters:
            return
        want_frames: list[Any] = [{"ok": True, "kicked": done}]
        if meddle == "ping":
            want_frames.append({"ok": True})
        elif meddle == "stats":
            assert len(got) == 2 and got[1]["ok"] is True and got[1]["stats"]["types"] == []
            got = got[:1]
        elif meddle == "kick_same":
            if target.state == "dead":  # beyond `limit`: this kick takes it
                self.revive(target)
                want_frames.append({"ok": True, "id": target.id})
                got = got[:1] + got[1:2]
                self.finish_step()
            else:
                want_frames.append({"error": "invalid_state", "reason": target.state})
        assert got == want_frames, (got, want_frames)

    @rule(slot=st.integers(0, MASTER_SLOTS - 1), job_type=types, pause=st.booleans())
    def pause_or_resume(self, slot: int, job_type: str, pause: bool) -> None:
        master = self.master(slot)
        if pause:
            self.paused.add(job_type)
        else:
            self.paused.discard(job_type)
        self.send(master.peer, {"action": "pause" if pause else "resume", "type": job_type})
        self.reply(slot, {"ok": True})
        self.finish_step()

    def expected_rows(self) -> dict[str, list[tuple[Any, str]]]:
        """Per (state, type) section, the jobs in listing order."""
        order = {
            "queued": lambda j: (-j.priority, j.seq),
            "running": lambda j: j.seq,
        }
        sections: dict[str, list[tuple[Any, str]]] = {}
        for state in STATES:
            for job_type in TYPES:
                jobs = [j for j in self.live.values() if j.state == state and j.type == job_type]
                jobs.sort(key=order.get(state, lambda j: j.mark))
                if jobs:
                    sections[f"{state}/{job_type}"] = [(key(j.id), state) for j in jobs]
        return sections

    @rule(
        slot=st.integers(0, MASTER_SLOTS - 1),
        job_type=st.one_of(st.none(), types),
        state=st.one_of(st.none(), st.sampled_from(STATES)),
        limit=st.sampled_from([1, 2, 3, 100]),
    )
    def jobs(self, slot: int, job_type: str | None, state: str | None, limit: int) -> None:
        """Page through `jobs` to the end: every job held, each section in its order."""
        master = self.master(slot)
        request: dict[str, Any] = {"action": "jobs", "limit": limit}
        if job_type is not None:
            request["type"] = job_type
        if state is not None:
            request["state"] = state
        rows: list[dict[str, Any]] = []
        for _ in range(100):
            self.send(master.peer, request)
            (page,) = self.take(master.peer)
            assert page["ok"] is True and len(page["jobs"]) <= limit, page
            rows += page["jobs"]
            if page["next"] is None:
                break
            request["cursor"] = page["next"]
        else:
            raise AssertionError("no end to the pages")
        by_job = {key(j.id): j for j in self.live.values()}
        got: dict[str, list[tuple[Any, str]]] = {}
        sections_seen: list[str] = []
        for row in rows:
            job = by_job[key(row["id"])]
            assert row == {
                "id": job.id, "type": job.type, "priority": job.priority, "state": job.state,
                "attempt": job.attempts, "age_s": round(self.wall.now - job.accepted, 3),
                "detach": job.detached,
            }, row  # fmt: skip
            section = f"{row['state']}/{row['type']}"
            if not sections_seen or sections_seen[-1] != section:
                assert section not in sections_seen, (section, sections_seen)  # contiguous
                sections_seen.append(section)
            got.setdefault(section, []).append((key(row["id"]), row["state"]))
        states_seen = [s.split("/")[0] for s in sections_seen]
        assert states_seen == sorted(states_seen, key=STATES.index)  # states in order
        want = {
            name: section
            for name, section in self.expected_rows().items()
            if (state is None or name.startswith(state + "/"))
            and (job_type is None or name.endswith("/" + job_type))
        }
        assert got == want
        self.finish_step()

    @rule(slot=st.integers(0, MASTER_SLOTS - 1))
    def stats(self, slot: int) -> None:
        master = self.master(slot)
        self.send(master.peer, {"action": "stats"})
        frames = self.take(master.peer)
        assert len(frames) == 1 and frames[0]["ok"] is True
        stats = frames[0]["stats"]
        assert stats["totals"] == dict(self.totals)
        assert stats["connections"] == {"masters": len(self.masters), "slaves": len(self.slaves)}
        counts = ("queued", "running", "slaves", "idle", "delayed", "waiting", "dead")
        want = []
        for job_type in TYPES:
            row: dict[str, Any] = {"type": job_type}
            for state in ("queued", "running"):
                row[state] = sum(
                    1 for j in self.live.values() if j.type == job_type and j.state == state
                )
            row["slaves"] = sum(1 for s in self.slaves.values() if s.type == job_type)
            row["idle"] = sum(
                1 for s in self.slaves.values() if s.type == job_type and s.held is None
            )
            for state in ("delayed", "waiting", "dead"):
                row[state] = sum(
                    1 for j in self.live.values() if j.type == job_type and j.state == state
                )
            row["paused"] = job_type in self.paused
            row["completed"] = self.ends[job_type]["ok"]
            row["failed"] = sum(self.ends[job_type][o] for o in FAILED_OUTCOMES)
            if any(row[n] for n in counts) or row["paused"]:
                want.append(row)
        shown = stats["types"]
        assert len(shown) == min(1, len(want))
        assert all(canon(row) in map(canon, want) for row in shown)
        if len(want) > 1:
            rest = [row for row in want if canon(row) not in map(canon, shown)]
            summed = {"types": len(rest), **{n: sum(row[n] for row in rest) for n in counts}}
            assert stats["types_omitted"] == summed
        else:
            assert "types_omitted" not in stats
        assert stats["waiting"] == sum(1 for j in self.live.values() if j.state == "waiting")
        self.finish_step()

    @rule(slot=st.integers(0, MASTER_SLOTS - 1))
    def master_leaves(self, slot: int) -> None:
        master = self.masters.get(slot)
        if master is None:
            return
        self.broker.disconnect(master.peer)
        del self.masters[slot]
        self.expected.pop(slot, None)
        jobs = list(master.pending.values())
        left = []
        for job in jobs:
            job.masters.remove(slot)
            if not job.masters and not job.detached:
                left.append(job)
        for job in left:
            if job.state == "gone" or job.masters:
                continue  # failed just now as a dependent of an earlier one
            self.totals["withdrawn"] += 1
            self.forget(job, ok=False)  # a running one stays with its slave as an orphan
        self.finish_step()

    # ------------------------------------------------------------ slave rules

    @rule(slot=st.integers(0, SLAVE_SLOTS - 1), job_type=types)
    def join(self, slot: int, job_type: str) -> None:
        if slot not in self.slaves:
            self.slaves[slot] = MSlave(self.broker.connect_slave(self._name()))
        slave = self.slaves[slot]
        held, slave.held = slave.held, None
        if held is not None and held.state == "running":
            held.state = "queued"  # given back, no loss counted
        slave.type = job_type
        self.send(slave.peer, {"action": "join", "type": job_type})
        self.finish_step(acting_slave=slave, slave_reply={"ok": True})

    def _needs_job(self, slave: MSlave) -> dict[str, Any] | None:
        return (
            None
            if slave.held is not None
            else {"error": "invalid_state", "reason": "not_processing"}
        )

    @rule(slot=st.integers(0, SLAVE_SLOTS - 1), body=st.integers(0, 9))
    def respond(self, slot: int, body: int) -> None:
        slave = self.slave(slot)
        refusal = self._needs_job(slave)
        job, slave.held = slave.held, None
        if job is not None and job.state == "running":
            self.totals["completed"] += 1
            self.ends[job.type]["ok"] += 1
            self.end(job, {"id": job.id, "body": body}, ok=True)
        self.send(slave.peer, {"action": "respond", "body": body})
        self.finish_step(acting_slave=slave, slave_reply=refusal or {"ok": True})

    @rule(
        slot=st.integers(0, SLAVE_SLOTS - 1),
        category=st.sampled_from(CATEGORIES),
        reason=st.integers(0, 3),
    )
    def fail_job(self, slot: int, category: str, reason: int) -> None:
        slave = self.slave(slot)
        refusal = self._needs_job(slave)
        job, slave.held = slave.held, None
        if job is not None and job.state == "running":
            if category in ("ERROR", "TIMEOUT") and self.retries_left(job):
                self.retry(job)
            else:
                frame = {"error": "job_error", "reason": reason, "id": job.id, "category": category}
                self.fail(job, frame, category.lower())
        self.send(slave.peer, {"action": "fail", "error": category, "reason": reason})
        self.finish_step(acting_slave=slave, slave_reply=refusal or {"ok": True})

    @rule(slot=st.integers(0, SLAVE_SLOTS - 1), value=st.integers(0, 100))
    def progress(self, slot: int, value: int) -> None:
        slave = self.slave(slot)
        job = slave.held
        if job is not None and job.state == "running":
            for master in job.masters:
                self.owe(master, {"id": job.id, "progress": value})
        self.send(slave.peer, {"action": "progress", "body": value})
        self.finish_step(acting_slave=slave, slave_reply=self._needs_job(slave))

    @rule(slot=st.integers(0, SLAVE_SLOTS - 1))
    def slave_leaves(self, slot: int) -> None:
        slave = self.slaves.pop(slot, None)
        if slave is None:
            return
        self.broker.disconnect(slave.peer)
        job = slave.held
        if job is not None and job.state == "running":
            job.losses += 1
            if job.losses > MAX_RETRIES:
                self.fail(job, failed(job.id, "CRASH"), "crash")
            else:
                self.totals["requeued"] += 1
                job.state = "queued"
        self.finish_step()

    # ------------------------------------------------------------ noise and time

    @rule(
        port=st.sampled_from(["master", "slave"]),
        slot=st.integers(0, 2),
        frame=st.one_of(
            st.sampled_from(BAD_MASTER).map(lambda f: ("master", f)),
            st.sampled_from(BAD_SLAVE).map(lambda f: ("slave", f)),
            st.just(("any", {"action": "auth", "token": "t"})),
            st.just(("any", {"action": "ping"})),
            bad_payloads.map(lambda p: ("any", p)),
        ),
    )
    def noise(self, port: str, slot: int, frame: tuple[str, Any]) -> None:
        """A frame the port must refuse (or an auth frame, harmless without a token)."""
        meant_for, content = frame
        if meant_for != "any":
            port = meant_for
        peer = self.master(slot).peer if port == "master" else self.slave(slot).peer
        if isinstance(content, bytes):
            try:
                obj = codec.loads(content)
            except codec.DecodeError:
                obj = None
            if isinstance(obj, dict) and "action" in obj:
                return  # a real request by chance: not noise
            receive(self.broker, peer, content)
        else:
            self.send(peer, content)
        if content in ({"action": "auth", "token": "t"}, {"action": "ping"}):
            assert self.take(peer) == [{"ok": True}]
            self.finish_step()
            return
        self._one_error(peer)

    @rule(index=st.integers(0, 7))
    def crash_busy_slave(self, index: int) -> None:
        """A slave holding a job is lost (the path that requeues and fails with CRASH)."""
        busy = [slot for slot, s in self.slaves.items() if s.held is not None]
        if busy:
            self.slave_leaves(busy[index % len(busy)])

    @rule(index=st.integers(0, 7))
    def cancel_own(self, index: int) -> None:
        """A master cancels one of its own jobs (queued, waiting, delayed or running)."""
        owned = [j for j in self.live.values() if j.masters]
        if owned:
            job = owned[index % len(owned)]
            self.cancel(job.masters[-1], job.id)

    @rule(index=st.integers(0, 7), slot=st.integers(0, MASTER_SLOTS - 1))
    def kick_dead(self, index: int, slot: int) -> None:
        """Kick one of the dead jobs (by id)."""
        dead = [j for j in self.live.values() if j.state == "dead"]
        if dead:
            self.kick(slot, dead[index % len(dead)].id)

    @rule(body=st.integers(0, 9))
    def serve_all(self, body: int) -> None:
        """Every slave holding a job answers it (keeps work flowing)."""
        for slot in [k for k, v in self.slaves.items() if v.held is not None]:
            self.respond(slot, body)

    def _one_error(self, peer: Any) -> None:
        frames = self.take(peer)
        assert len(frames) == 1 and frames[0].get("error") in ERROR_NAMES, frames
        assert set(frames[0]) == {"error", "reason"}
        self.finish_step()

    @rule(advance=st.sampled_from([0.5, 1.0, 3.0, 15.0, 45.0]))
    def tick(self, advance: float) -> None:
        self.clock.now += advance
        self.wall.now += advance
        now = self.clock.now
        due = sorted(
            (
                j
                for j in self.live.values()
                if j.state == "running" and j.timeout is not None and j.deadline <= now
            ),
            key=lambda j: (j.deadline, j.seq),
        )
        for job in due:
            if job.state != "running":
                continue
            # Its slave keeps an orphan copy; the job itself goes on (retried, or
            # dead: a kick must not bring the orphan back with it).
            for slave in self.slaves.values():
                if slave.held is job:
                    orphan = copy.copy(job)
                    orphan.state = "gone"
                    slave.held = orphan
            if self.retries_left(job):
                self.retry(job)
            else:
                self.fail(job, failed(job.id, "TIMEOUT"), "timeout")
        ready = sorted(
            (j for j in self.live.values() if j.state == "delayed" and j.ready_at <= now),
            key=lambda j: (j.ready_at, j.mark),
        )
        for job in ready:
            job.ready_at = 0.0
            self.new_seq(job)
            job.state = "queued"
        self.broker.tick(now)
        while self.broker.next_deadline() == float("-inf"):
            self.broker.tick(now)
        for store in (self.outcomes, self.results):
            for k in [k for k, v in store.items() if v[0] <= now]:
                del store[k]
        self.finish_step()

    # ------------------------------------------------------------ invariants

    @invariant()
    def broker_agrees(self) -> None:
        b = self.broker
        assert b.totals == dict(self.totals)
        assert len(b.masters) == len(self.masters) and len(b.slaves) == len(self.slaves)
        assert {key(i) for i in b.jobs} == set(self.live)
        assert b.queued_total == self.queued_total()
        assert b.live_jobs() == self.live_jobs()
        totals = self.totals
        assert totals["submitted"] == (
            totals["completed"]
            + totals["failed"]
            + totals["cancelled"]
            + totals["withdrawn"]
            + self.live_jobs()
        )
        holders = Counter(
            id(s.job) for s in b.slaves if s.job is not None and s.job.state == RUNNING
        )
        assert all(n == 1 for n in holders.values())  # no job on two slaves
        running = [j for j in b.jobs.values() if j.state == RUNNING]
        assert len(running) == len(holders)
        for slave in self.slaves.values():
            assert (slave.peer.job is None) == (slave.held is None)
            if slave.held is not None:
                assert key(slave.peer.job.id) == key(slave.held.id)

    @invariant()
    def no_idle_slave_beside_ready_work(self) -> None:
        for job_type in TYPES:
            if job_type in self.paused:
                continue
            idle = any(s.type == job_type and s.held is None for s in self.slaves.values())
            ready = any(j.type == job_type and j.state == "queued" for j in self.live.values())
            assert not (idle and ready), job_type

    # ------------------------------------------------------------ the end

    def teardown(self) -> None:
        if self.live or self.masters or self.slaves or self.paused:
            self.drain()  # (a paused type is kept, even empty, until resumed)
        for slot in list(self.masters):
            self.master_leaves(slot)
        for slot in list(self.slaves):
            self.slave_leaves(slot)
        self.clock.now += TTL + 100
        self.broker.tick(self.clock.now)
        b = self.broker
        assert b.jobs == {} and b.types == {} and b.queued_total == 0
        assert b.masters == set() and b.slaves == set() and not b.dirty
        assert not b.stores.results and not b.stores.outcomes and not b._timeouts
        assert b.dead_total == 0 and b.delayed_total == 0 and b.waiting_total == 0
        assert b.next_deadline() == float("inf")

    def drain(self) -> None:
        """Serve everything left, so that every job still owed an answer gets it;
        dead letters are deleted (they are kept until someone does)."""
        for job_type in list(self.paused):
            self.pause_or_resume(0, job_type, pause=False)
        for _ in range(400):
            busy = [s for s in self.slaves.values() if s.held is not None]
            if busy:
                slot = next(k for k, v in self.slaves.items() if v is busy[0])
                self.respond(slot, 0)
                continue
            if any(j.state == "delayed" for j in self.live.values()):
                self.tick(45.0)
                continue
            stuck = {j.type for j in self.live.values() if j.state == "queued"}
            if stuck:
                for job_type in stuck:
                    slot = max(self.slaves, default=-1) + 1
                    self.join(slot, job_type)
                continue
            dead = [j for j in self.live.values() if j.state == "dead"]
            if not dead:
                break
            for job in dead:
                self.delete(0, job.id)
        assert not any(
            j.state in ("queued", "running", "delayed", "dead") for j in self.live.values()
        )
        # Waiting jobs can only wait on live jobs, and none is left to wait on.
        assert not self.live, list(self.live)
        for master in self.masters.values():
            assert not master.pending  # every accepted job was answered


def failed(job_id: Any, category: str, **extra: Any) -> dict[str, Any]:
    return {"error": "job_failed", "reason": job_id, "id": job_id, "category": category, **extra}


def attached(job_id: Any) -> dict[str, Any]:
    return {"ok": True, "id": job_id, "attached": True}


def fuzz_settings(examples: int) -> settings:
    """The machines' settings: `examples` runs of `STEPS` steps, derandomized
    (the same examples in every run) unless GLOOMD_FUZZ_RANDOM is set."""
    return settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        derandomize=os.environ.get("GLOOMD_FUZZ_RANDOM") is None,
    )


BrokerMachine.TestCase.settings = fuzz_settings(EXAMPLES)
TestBrokerMachine = BrokerMachine.TestCase
