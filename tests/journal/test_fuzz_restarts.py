"""The broker fuzz (tests/daemon/test_broker_fuzz.py) with restarts: the restored
broker equals its independent model's durable part.

`RestartMachine` runs every rule of `BrokerMachine` on a broker whose journal
effects (`gloomd.durable`) are collected into a real `JournalStore` in a tmp
dir, as the server's writer does (`commit`, a rule of its own, so that a
restart also finds changes written in several batches).  The `restart` rule
commits, closes the store, reads it back (`load`, `decode_snapshot`) and
replays it into a fresh broker (`restore`): every connection is gone.  The
model applies the same restart to itself, from its own rules and not from
the broker's: attached jobs vanish with their masters, a detached job waiting
on one fails with DEPENDENCY, a running one comes back queued after one loss
of its slave (or dead with CRASH past the retries), and the counters start
again from what was restored.  Then the restored broker must equal the
model: its ids and their states, attempts and fields, the order of each
state's jobs (a full `jobs` listing), kept results and dead letters' frames
(`result` of every id), pause flags and counters (`stats`); and the fuzz's
invariants and predictions go on holding on it.

Runs `GLOOMD_FUZZ_RESTART_EXAMPLES` examples (default 200, about 5 s) of up to
`GLOOMD_FUZZ_STEPS` steps (default 50); raise both for a long run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import event
from hypothesis.stateful import rule

from gloomd.broker import Broker
from gloomd.durable import Durable
from gloomd.journal import BatchBuilder, JournalStore
from gloomd.replay import decode_snapshot, restore
from gloomd.state import STATE_NAMES
from gloomwire import codec
from tests.daemon.test_broker_fuzz import (
    IDS,
    MAX_RETRIES,
    TYPES,
    BrokerMachine,
    MJob,
    failed,
    fuzz_settings,
    key,
)

pytestmark = pytest.mark.timeout(300)

EXAMPLES = int(os.environ.get("GLOOMD_FUZZ_RESTART_EXAMPLES", "200"))


class RestartMachine(BrokerMachine):
    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="gloomd-fuzz-")
        self.path = os.path.join(self.folder, "journal.db")
        self.store = JournalStore.open(self.path, "normal")
        self.durable = Durable(None)  # --sync off's effects: acks never wait
        self.restarts = 0
        super().__init__()

    def new_broker(self) -> Broker:
        broker = super().new_broker()
        broker.journal = self.durable
        broker.stores.dropped = self.durable.touched
        return broker

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.store.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    @rule()
    def commit(self) -> None:
        """One pass's batch to the store, as the writer does (`gloomd.writer`)."""
        builder = BatchBuilder()
        b = self.broker
        self.durable.collect(b.jobs, b.stores, b.types, builder, self.wall.now, self.clock.now)
        self.store.commit(builder.take())
        self.durable.close()

    @rule()
    def restart(self) -> None:
        """The process stops (after its last commit) and starts again on its journal."""
        self.commit()
        self.store.close()
        self.store = JournalStore.open(self.path, "normal")
        restored = decode_snapshot(self.path, self.store.load())
        self.durable = Durable(None)
        self.broker = self.new_broker()
        restore(self.broker, restored, self.wall.now, self.clock.now)
        self.restart_model()
        self.restarts += 1
        event(f"restart with {len(self.live)} jobs held")  # (--hypothesis-show-statistics)
        self.compare()

    def restart_model(self) -> None:
        """The same restart, applied to the model (and derived from it alone)."""
        self.masters, self.slaves, self.expected = {}, {}, {}
        survivors = [j for j in self.live.values() if j.detached]
        for job in self.live.values():
            job.masters = []
            if not job.detached:
                job.state = "gone"
        self.live = {key(j.id): j for j in survivors}
        for job in survivors:
            job.dependents = [d for d in job.dependents if d.detached]
        # A result's row is its id's: a job held under that id replaces it.
        self.results = {k: v for k, v in self.results.items() if k not in self.live}
        # An outcome is kept with its result (an attached job's, even of the
        # same id since, is not durable).
        self.outcomes = {k: (v[0], "error" not in v[1]) for k, v in self.results.items()}
        self.totals = Counter(dict.fromkeys(self.totals, 0))
        self.totals["submitted"] = len(survivors)
        self.totals["failed"] = sum(1 for j in survivors if j.state == "dead")
        self.ends = {t: Counter() for t in TYPES}
        states = {id(j): j.state for j in survivors}
        # Dead, delayed and waiting jobs enter again in the order they entered.
        for job in sorted(survivors, key=lambda j: j.mark):
            if states[id(job)] in ("queued", "running") or job.state != states[id(job)]:
                continue  # (or failed already, as a dependent of one failed here)
            if job.state == "waiting" and any(k not in self.live for k in job.deps):
                # It waited on an attached job, gone with its master.
                self.fail(job, failed(job.id, "DEPENDENCY"), "dependency")
            else:
                job.mark = self.next_mark()
        # Queued and running ones in their order; a running one lost its slave.
        for job in sorted(survivors, key=lambda j: j.seq):
            if job.state != "running":
                continue
            job.losses += 1
            if job.losses > MAX_RETRIES:
                self.fail(job, failed(job.id, "CRASH"), "crash")
            else:
                self.totals["requeued"] += 1
                job.state = "queued"

    def compare(self) -> None:
        """The restored broker against the model's durable part."""
        b = self.broker
        assert {key(i) for i in b.jobs} == set(self.live)
        for job in b.jobs.values():
            want: MJob = self.live[key(job.id)]
            got = (job.type, job.body, job.priority, STATE_NAMES[job.state], job.attempt)
            assert got == (want.type, want.body, want.priority, want.state, want.attempts)
            assert (job.retries, job.retried, job.timeout, job.losses) == (
                want.retries,
                want.retried,
                want.timeout,
                want.losses,
            ), job.id
        assert {key(i) for i in b.stores.results} == set(self.results)
        for job_id, (_, frame, _) in b.stores.results.items():
            assert codec.loads(frame[4:]) == self.results[key(job_id)][1]
        assert {q.type for q in b.types.values() if q.paused} == self.paused
        # Orders (every state's, by a full listing), frames and counters, as
        # a master sees them, through the fuzz's own rules.
        self.jobs(0, None, None, 100)
        for job_id in IDS:
            self.result(0, job_id)
        self.stats(0)


RestartMachine.TestCase.settings = fuzz_settings(EXAMPLES)
TestRestartMachine = RestartMachine.TestCase
