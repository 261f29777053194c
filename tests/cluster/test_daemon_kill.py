"""A gloomd daemon SIGKILLed under load, its cluster carrying on (issue 16).

Two real daemons share one Redis.  The masters that survive are on daemon
B; slaves work on both.  At a random moment (the seed is printed, and
GLOOMD_KILL_SEED replays it) daemon A is SIGKILLed with jobs running on its
slaves.  When A's lease lapses, B reaps it: the jobs A's slaves held are
redelivered to B's slaves with a higher attempt.  What must hold:

- every job B acked ends with its result at its master, exactly once;
- every job delivered twice was delivered the second time with a higher
  attempt, and only jobs running on A's slaves at the kill were;
- no result names a job nobody submitted;
- detached jobs acked by A before it died run anyway, and their results
  are read from B.
"""

from __future__ import annotations

import os
import random
import signal
from collections import defaultdict
from typing import Any

import pytest
import trio

from tests.cluster.redis_server import RedisServer
from tests.support.daemon import spawn_gloomd
from tests.support.wire import Peer

pytestmark = pytest.mark.timeout(120)

JOBS = 400
DETACHED = 20
WINDOW = 48
SLAVES_EACH = 4
#: Seconds of the daemons' lease: short, so that A's lapses quickly.
LEASE = "1"


def cluster_args(redis: RedisServer, name: str) -> list[str]:
    return ["--cluster", redis.url, "--cluster-name", name, "--cluster-lease", LEASE]


class Ledger:
    """What the slaves and masters saw, for the checks at the end."""

    def __init__(self) -> None:
        self.deliveries: dict[Any, list[tuple[str, int]]] = defaultdict(list)
        #: Jobs A's slaves received and never saw confirmed (no ok to their
        #: respond): those the kill may have cut, whether or not A had
        #: applied the respond already.
        self.unconfirmed_on_a: set[Any] = set()
        self.confirmed: set[Any] = set()
        self.detached: set[Any] = set()
        self.detached_done = trio.Event()
        self.responded = 0
        self.kill_at = 0
        self.killed = trio.Event()
        self.acked: set[Any] = set()
        self.results: dict[Any, list[Any]] = defaultdict(list)
        self.all_done = trio.Event()

    def confirm(self, job_id: Any) -> None:
        self.confirmed.add(job_id)
        if self.detached and self.detached <= self.confirmed:
            self.detached_done.set()


async def slave(port: int, where: str, ledger: Ledger, on_kill: Any) -> None:
    peer = await Peer.connect(port)
    assert await peer.request({"action": "join", "type": "work"}) == {"ok": True}
    answered = None  # the job whose respond awaits its ok
    while True:
        try:
            frame = await peer.recv()
        except (EOFError, trio.BrokenResourceError, ConnectionError):
            return  # A was killed under us
        if frame.get("action") != "job":
            assert frame == {"ok": True}, frame
            if answered is not None:
                ledger.confirm(answered)
                if where == "A":
                    ledger.unconfirmed_on_a.discard(answered)
                answered = None
            continue
        job_id, attempt = frame["id"], frame.get("attempt", 1)
        ledger.deliveries[job_id].append((where, attempt))
        if where == "A":
            ledger.unconfirmed_on_a.add(job_id)
            if ledger.killed.is_set():
                return
            ledger.responded += 1
            if ledger.responded >= ledger.kill_at:
                on_kill()  # with this job (at least) running on A
                return
        try:
            await peer.send({"action": "respond", "body": {"id": job_id, "attempt": attempt}})
        except (trio.BrokenResourceError, ConnectionError):
            return
        answered = job_id


async def master(port: int, ledger: Ledger) -> None:
    peer = await Peer.connect(port)
    room = trio.Semaphore(WINDOW)

    async def reader() -> None:
        while True:
            frame = await peer.recv()
            if frame.get("ok"):
                ledger.acked.add(frame["id"])
                continue
            assert "error" not in frame, frame
            ledger.results[frame["id"]].append(frame["body"])
            room.release()
            if len(ledger.results) == JOBS:
                ledger.all_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for n in range(JOBS):
            await room.acquire()
            await peer.send({"action": "submit", "id": f"j{n}", "type": "work", "body": n})
        await ledger.all_done.wait()
        nursery.cancel_scope.cancel()


async def submit_detached(port: int) -> list[str]:
    peer = await Peer.connect(port)
    ids = [f"d{n}" for n in range(DETACHED)]
    for job_id in ids:
        reply = await peer.request(
            {"action": "submit", "id": job_id, "type": "work", "body": job_id, "detach": True}
        )
        assert reply == {"ok": True, "id": job_id}
    return ids


async def read_results(port: int, ledger: Ledger) -> dict[str, Any]:
    """Each detached job's result, read from B once every one of them was
    confirmed to its slave (so each is stored: no retry loop)."""
    await ledger.detached_done.wait()
    peer = await Peer.connect(port)
    return {
        job_id: await peer.request({"action": "result", "id": job_id})
        for job_id in sorted(ledger.detached)
    }


async def test_a_daemon_sigkilled_under_load_loses_no_acked_job(
    redis_server: RedisServer, cluster_name: str
) -> None:
    seed = int(os.environ.get("GLOOMD_KILL_SEED", random.randrange(1 << 32)))
    print(f"GLOOMD_KILL_SEED={seed}")
    rng = random.Random(seed)
    ledger = Ledger()
    ledger.kill_at = rng.randrange(20, JOBS // 4)  # counted on A alone
    args = cluster_args(redis_server, cluster_name)
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    with spawn_gloomd(*args, env=quiet) as a, spawn_gloomd(*args, env=quiet) as b:
        detached = await submit_detached(a.master_port)
        ledger.detached = set(detached)

        def kill_a() -> None:
            a.proc.send_signal(signal.SIGKILL)
            ledger.killed.set()

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for where, daemon in (("A", a), ("B", b)):
                    for _ in range(SLAVES_EACH):
                        nursery.start_soon(slave, daemon.slave_port, where, ledger, kill_a)
                await master(b.master_port, ledger)
                results = await read_results(b.master_port, ledger)
                stats = await (await Peer.connect(b.master_port)).request({"action": "stats"})
                nursery.cancel_scope.cancel()
        assert a.proc.wait(10) == -signal.SIGKILL
        assert b.proc.poll() is None
        check(ledger, results, detached, seed, stats["stats"])


def check(
    ledger: Ledger,
    detached_results: dict[str, Any],
    detached: list[str],
    seed: int,
    stats: dict[str, Any],
) -> None:
    why = f"(GLOOMD_KILL_SEED={seed})"
    submitted = {f"j{n}" for n in range(JOBS)}
    assert ledger.killed.is_set(), why
    assert ledger.acked == submitted, why
    # Exactly one result per acked job, with the body its slave gave.
    assert set(ledger.results) == submitted, why
    for job_id, bodies in ledger.results.items():
        assert len(bodies) == 1, (job_id, bodies, why)
        assert bodies[0]["id"] == job_id, why
    # Nothing invented: every delivery is of a job somebody submitted.
    assert set(ledger.deliveries) <= submitted | set(detached), why
    # Redelivered: only jobs A's slaves held unconfirmed when A died, each
    # once more, on B, with the next attempt.  The slave that killed A held
    # one, whose respond was never sent: it must come back.
    cut = ledger.unconfirmed_on_a
    again = {job_id for job_id, seen in ledger.deliveries.items() if len(seen) > 1}
    assert again <= cut, (again, cut, {j: ledger.deliveries[j] for j in again | cut}, why)
    for job_id in again:
        seen = ledger.deliveries[job_id]
        assert len(seen) == 2 and seen[0][0] == "A", (job_id, seen, why)
        assert seen[1] == ("B", seen[0][1] + 1), (job_id, seen, why)
    assert again, why
    # Counted by Redis: every job completed once, none failed.  Every result
    # is in, and the reap that brought the cut jobs back ran before the last
    # of them (the killing slave's job needed it), so a job it wrongly put
    # back would show here, as queued, running, or completed twice.
    totals, (row,) = stats["totals"], stats["types"]
    assert (totals["submitted"], totals["completed"]) == (JOBS + DETACHED,) * 2, (stats, why)
    assert totals["failed"] == 0 and totals["requeued"] >= len(again), (stats, why)
    assert (row["type"], row["queued"], row["running"]) == ("work", 0, 0), (stats, why)
    # Detached jobs acked by A ran on the cluster; B serves their results.
    for job_id in detached:
        reply = detached_results[job_id]
        assert reply["id"] == job_id and reply["body"]["id"] == job_id, (reply, why)
