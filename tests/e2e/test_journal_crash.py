"""kill -9 under load with --journal: nothing acked is lost, nothing is invented, order is kept.

Several rounds on one journal file, seeded: a daemon starts on it, three
masters submit detached jobs of mixed priorities while two slaves work
(and now and then drop their connection holding a job), and the daemon is
SIGKILLed once a random number of acks has arrived.  The next round starts
a daemon on the same file.  At the end a last daemon is started and what
it holds is checked against what the masters were told:

* every acked id is held exactly once (any state) or its result is kept,
  and the result is the one its slave gave;
* every id held or answered was submitted by a master (none invented);
* the jobs no slave ever saw are listed in strict dispatch order: priority
  first, then each master's own submission order;
* a slave then drains the queue and gets each held job exactly once.

Bounded: a few thousand jobs per mode, every wait under `fail_after`.  The
longer soak is benchmarks/journal_soak.py (GLOOMD_CRASH_ROUNDS, GLOOMD_CRASH_SEED).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.daemon import Daemon, spawn_gloomd
from tests.support.wire import Peer

MASTERS = 3
SLAVES = 2
#: Kill rounds per mode; benchmarks/journal_soak.py runs many more (and its own seed).
ROUNDS = int(os.environ.get("GLOOMD_CRASH_ROUNDS", "4"))
SEED = os.environ.get("GLOOMD_CRASH_SEED", "journal-crash")
WINDOW = 64  # submits in flight per master
WAIT = 20.0
QUIET = {"GLOOMD_TEST_QUIET_LOGS": "1"}


@dataclass
class Tally:
    sent: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # id -> (master, n, prio)
    acked: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    acks: int = 0
    target: int = 0
    reached: trio.Event = field(default_factory=trio.Event)
    counters: list[int] = field(default_factory=lambda: [0] * MASTERS)


async def master_task(daemon: Daemon, m: int, tally: Tally, rng: random.Random) -> None:
    try:
        peer = await Peer.connect(daemon.master_port)
        outstanding = 0
        while True:
            while outstanding < WINDOW:
                n = tally.counters[m]
                tally.counters[m] += 1
                job_id = f"m{m}-{n}"
                prio = rng.choice((0, 0, 1, 2))
                tally.sent[job_id] = (m, n, prio)
                frame = {"action": "submit", "id": job_id, "type": "w", "body": job_id,
                         "priority": prio, "detach": True}  # fmt: skip
                await peer.send(frame)
                outstanding += 1
            reply = await peer.recv()
            if reply.get("ok") is True and "id" in reply:
                outstanding -= 1
                tally.acked.add(reply["id"])
                tally.acks += 1
                if tally.acks >= tally.target:
                    tally.reached.set()
            elif "error" in reply and reply.get("error") not in ("job_error", "job_failed"):
                raise AssertionError(reply)
            # else: a detached job's result, to its master while connected
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return  # the daemon was killed


async def slave_task(daemon: Daemon, tally: Tally, rng: random.Random) -> None:
    try:
        while True:
            peer = await Peer.connect(daemon.slave_port)
            await peer.send({"action": "join", "type": "w"})
            assert await peer.recv() == {"ok": True}
            while True:
                job = await peer.recv()
                tally.delivered.add(job["id"])
                if rng.random() < 0.01:  # reset holding the job: it is requeued
                    await peer.stream.aclose()
                    break
                await peer.send({"action": "respond", "body": job["body"]})
                assert await peer.recv() == {"ok": True}
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return


async def held_jobs(master: Peer) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for state in ("queued", "running", "delayed", "waiting", "dead"):
        cursor = None
        while True:
            frame: dict[str, Any] = {"action": "jobs", "state": state, "limit": 1000}
            if cursor is not None:
                frame["cursor"] = cursor
            await master.send(frame)
            with trio.fail_after(WAIT):
                page = await master.recv()
            jobs += page["jobs"]
            cursor = page["next"]
            if cursor is None:
                break
    return jobs


@pytest.mark.parametrize("sync", ["full", "normal"])
async def test_kill_9_under_load_loses_nothing_acked(tmp_path: Path, sync: str) -> None:
    rng = random.Random(f"{SEED}-{sync}")
    journal = str(tmp_path / "j.db")
    tally = Tally()
    args = ("--journal", journal, "--sync", sync, "--no-http", "--max-retries", "1000")
    with trio.fail_after(60 + 15 * ROUNDS):
        for _ in range(ROUNDS):
            tally.target = tally.acks + rng.randint(300, 1500)
            tally.reached = trio.Event()
            with spawn_gloomd(*args, env=QUIET) as daemon:
                async with trio.open_nursery() as nursery:
                    for m in range(MASTERS):
                        nursery.start_soon(
                            master_task, daemon, m, tally, random.Random(rng.random())
                        )
                    for _ in range(SLAVES):
                        nursery.start_soon(slave_task, daemon, tally, random.Random(rng.random()))
                    await tally.reached.wait()
                    daemon.proc.kill()
                    await trio.to_thread.run_sync(daemon.proc.wait)
                    nursery.cancel_scope.cancel()

        with spawn_gloomd(*args, env=QUIET) as daemon:
            master = await Peer.connect(daemon.master_port)
            held = await held_jobs(master)
            ids = [job["id"] for job in held]
            assert len(ids) == len(set(ids)), "a job held twice"
            assert set(ids) <= tally.sent.keys(), "a job invented"
            assert all(job["state"] == "queued" for job in held)  # nothing runs, nothing delayed
            # Not held: answered, and the answer kept.
            for job_id in sorted(tally.acked - set(ids)):
                await master.send({"action": "result", "id": job_id})
                with trio.fail_after(WAIT):
                    assert await master.recv() == {"id": job_id, "body": job_id}, job_id
            # The jobs no slave ever saw: strict order (priority, then each master's order).
            fresh = [tally.sent[i] for i in ids if i not in tally.delivered]
            assert [p for _, _, p in fresh] == sorted((p for _, _, p in fresh), reverse=True)
            for m in range(MASTERS):
                for prio in (0, 1, 2):
                    mine = [n for mm, n, p in fresh if mm == m and p == prio]
                    assert mine == sorted(mine)
            # Drain: each held job exactly once, in the listed order (one slave).
            slave = await Peer.connect(daemon.slave_port)
            await slave.send({"action": "join", "type": "w"})
            with trio.fail_after(WAIT):
                assert await slave.recv() == {"ok": True}
                drained = []
                for _ in ids:
                    job = await slave.recv()
                    drained.append(job["id"])
                    await slave.send({"action": "respond", "body": job["body"]})
                    assert await slave.recv() == {"ok": True}
            assert drained == ids
            await master.send({"action": "stats"})
            with trio.fail_after(WAIT):
                while "stats" not in (reply := await master.recv()):
                    pass
            totals = reply["stats"]["totals"]
            assert reply["stats"]["types"] == [] or reply["stats"]["types"][0]["queued"] == 0
    assert tally.acks > 1000
    assert totals["completed"] == len(ids)
