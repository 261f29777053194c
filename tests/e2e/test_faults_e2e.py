"""Faults end to end against a real gloomd: nothing accepted is lost or doubled.

Peers are the tests' own wire clients (tests/wire.py), so a bug shared by
gloomd and the `gloom` client cannot hide.  Randomness is seeded; every wait
is on a frame, an event or a process, bounded by `fail_after`; the only
clocks that run are the daemon's own deadlines (frame timeout), set short.
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any

import pytest
import trio

from gloomd.server import GloomServer
from tests.support.daemon import spawn_gloomd
from tests.support.logs import log_text
from tests.support.wire import Peer, frame, join

pytestmark = pytest.mark.timeout(60)


def abort(peer: Peer) -> None:
    """Close with a reset, as a killed process's kernel would: no goodbye."""
    sock = peer.stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def observe(port: int) -> dict[str, Any]:
    peer = await Peer.connect(port)
    stats = (await peer.request({"action": "stats"}))["stats"]
    await peer.aclose()
    return stats


async def until_masters(port: int, count: int) -> dict[str, Any]:
    """Stats once the daemon counts `count` masters besides the one asking."""
    with trio.fail_after(10):
        while True:
            stats = await observe(port)
            if stats["connections"]["masters"] == count + 1:
                return stats
            await trio.lowlevel.checkpoint()


def assert_counts_add_up(stats: dict[str, Any]) -> None:
    """Every accepted job is counted once where it ended, or is still held (issue 17):
    submitted = completed + failed + cancelled + withdrawn + live."""
    totals = stats["totals"]
    held = ("queued", "running", "delayed", "waiting")  # dead letters are counted as failed
    live = sum(t[k] for t in stats["types"] for k in held)
    ended = sum(totals[k] for k in ("completed", "failed", "cancelled", "withdrawn"))
    assert totals["submitted"] == ended + live, stats


class Tally:
    """Every frame a master got, per job id: the exactly-once ledger."""

    def __init__(self) -> None:
        self.acks: Counter[Any] = Counter()
        self.results: Counter[Any] = Counter()
        self.failures: dict[Any, list[str]] = {}

    def add(self, msg: dict[str, Any]) -> None:
        if msg.get("ok"):
            self.acks[msg["id"]] += 1
        elif msg.get("error") == "job_failed":
            self.failures.setdefault(msg["id"], []).append(msg["category"])
        elif "body" in msg:
            assert msg["body"] == {"n": msg["id"]}, msg  # the right result for the right job
            self.results[msg["id"]] += 1
        else:
            raise AssertionError(f"unexpected frame {msg}")

    @property
    def answered(self) -> int:
        return sum(self.results.values()) + sum(len(v) for v in self.failures.values())


def submits(ids: range, job_type: str = "t", rng: random.Random | None = None) -> bytes:
    return b"".join(
        frame(
            {
                "action": "submit",
                "id": i,
                "type": job_type,
                "priority": rng.randint(-2, 2) if rng else 0,
                "body": {"n": i},
            }
        )
        for i in ids
    )


# ------------------------------------------------------------------ slaves killed


async def test_slaves_killed_at_random_during_ten_thousand_jobs(gloomd_server: GloomServer) -> None:
    """Six slaves; each job delivery has a 0.4% chance of killing its slave (reset,
    job unanswered), which a fresh slave then replaces.  0 lost, 0 doubled."""
    n = 10_000
    rng = random.Random(8)
    kills = 0
    delivered: Counter[Any] = Counter()

    async def slave_seat() -> None:
        nonlocal kills
        while True:
            slave = await join(gloomd_server.slave_port, "t")
            while True:
                msg = await slave.recv()
                if msg.get("action") != "job":
                    continue
                delivered[msg["id"]] += 1
                if rng.random() < 0.004:
                    kills += 1
                    abort(slave)
                    Peer.OPEN.remove(slave)
                    break
                await slave.send({"action": "respond", "body": msg["body"]})

    tally = Tally()
    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(slave_seat)
        master = await Peer.connect(gloomd_server.master_port)
        await master.send_raw(submits(range(n), rng=rng))
        with trio.fail_after(45):
            while sum(tally.acks.values()) < n or tally.answered < n:
                tally.add(await master.recv())
        nursery.cancel_scope.cancel()
    assert kills > 10  # the faults really happened
    assert set(tally.results) == set(range(n)) and set(tally.results.values()) == {1}
    assert tally.failures == {}
    assert sum(delivered.values()) == n + kills  # each kill cost exactly one redelivery
    stats = await observe(gloomd_server.master_port)
    assert stats["totals"]["completed"] == n and stats["totals"]["requeued"] == kills
    assert_counts_add_up(stats)


SLAVE_PROCESS = textwrap.dedent(
    """
    import sys, gloom
    slave = gloom.Slave(("127.0.0.1", int(sys.argv[1])), timeout=30, reconnect=False)
    slave.join("p")
    print("joined", flush=True)
    while True:
        job = slave.job()
        slave.respond(job.body)
    """
)


def start_slave_process(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLAVE_PROCESS, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"joined\n"
    return proc


async def test_slave_processes_sigkilled_under_load(gloomd_server: GloomServer) -> None:
    """Real slave processes (the blocking client) SIGKILLed every 500 results."""
    n = 3_000
    port = gloomd_server.slave_port
    procs = [await trio.to_thread.run_sync(start_slave_process, port) for _ in range(3)]
    rng = random.Random(3)
    killed = 0
    tally = Tally()
    try:
        master = await Peer.connect(gloomd_server.master_port)
        await master.send_raw(submits(range(n), "p"))
        with trio.fail_after(45):
            while sum(tally.acks.values()) < n or tally.answered < n:
                tally.add(await master.recv())
                done = sum(tally.results.values())
                if done and done % 500 == 0 and done < n and killed < done // 500:
                    victim = rng.randrange(len(procs))
                    procs[victim].send_signal(signal.SIGKILL)
                    await trio.to_thread.run_sync(procs[victim].wait)
                    procs[victim].stdout.close()  # type: ignore[union-attr]
                    procs[victim] = await trio.to_thread.run_sync(start_slave_process, port)
                    killed += 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    assert killed == 5
    assert set(tally.results) == set(range(n)) and set(tally.results.values()) == {1}
    assert tally.failures == {}
    assert_counts_add_up(await observe(gloomd_server.master_port))


# ------------------------------------------------------------------ masters dropping


async def test_masters_dropping_with_queued_and_running_jobs(gloomd_server: GloomServer) -> None:
    """Four masters share two slaves; two of them vanish mid-run.  The others get
    every answer exactly once; nothing of the lost ones is left anywhere."""
    rng = random.Random(5)
    per_master = 400
    masters = [await Peer.connect(gloomd_server.master_port) for _ in range(4)]
    doomed = set(rng.sample(range(4), 2))
    served = Counter[Any]()

    async def slave_seat() -> None:
        slave = await join(gloomd_server.slave_port, "t")
        while True:
            msg = await slave.recv()
            if msg.get("action") == "job":
                served[msg["id"]] += 1
                await slave.send({"action": "respond", "body": msg["body"]})

    tallies = [Tally() for _ in masters]

    async def run_master(index: int) -> None:
        peer, tally = masters[index], tallies[index]
        ids = range(index * per_master, (index + 1) * per_master)
        await peer.send_raw(submits(ids))
        with trio.fail_after(30):
            while sum(tally.acks.values()) < per_master or tally.answered < per_master:
                tally.add(await peer.recv())
                # A doomed master leaves with jobs queued and running.
                if index in doomed and sum(tally.results.values()) == 50:
                    abort(peer)
                    Peer.OPEN.remove(peer)
                    return

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(slave_seat)
        async with trio.open_nursery() as runs:
            for index in range(4):
                runs.start_soon(run_master, index)
        stats = await until_masters(gloomd_server.master_port, 2)
        nursery.cancel_scope.cancel()
    for index, tally in enumerate(tallies):
        if index in doomed:
            assert sum(tally.results.values()) == 50
        else:
            assert set(tally.results.values()) == {1} and len(tally.results) == per_master
            assert tally.failures == {}
    assert max(served.values()) == 1  # no job ran twice
    assert all(t["queued"] == 0 and t["running"] == 0 for t in stats["types"])
    # The lost masters' unanswered jobs are counted, as withdrawn.
    assert stats["totals"]["withdrawn"] > 0
    assert_counts_add_up(stats)
    # The lost masters' ids are free again.
    observer = await Peer.connect(gloomd_server.master_port)
    lost_id = min(doomed) * per_master + per_master - 1
    assert await observer.request({"action": "submit", "id": lost_id, "type": "u", "body": 0}) == {
        "ok": True,
        "id": lost_id,
    }


# ------------------------------------------------------------------ stalls


async def test_slave_stalling_mid_frame_loses_its_job_to_another(make_server: Any) -> None:
    server = await make_server(frame_timeout=0.3)
    staller = await join(server.slave_port, "t")
    master = await Peer.connect(server.master_port)
    assert await master.request(
        {"action": "submit", "id": "j", "type": "t", "body": {"n": "j"}}
    ) == {"ok": True, "id": "j"}
    assert "attempt" not in await staller.recv()  # the first delivery: attempt 1
    whole = frame({"action": "respond", "body": "never finished"})
    await staller.send_raw(whole[: len(whole) // 2])  # and then nothing
    with trio.fail_after(5):
        assert await staller.recv() == {"error": "frame_timeout", "reason": 0.3}
        assert await staller.recv_eof()
    rescuer = await join(server.slave_port, "t")
    with trio.fail_after(5):
        job = await rescuer.recv()
    assert (job["id"], job["attempt"]) == ("j", 2)
    await rescuer.send({"action": "respond", "body": {"n": "j"}})
    with trio.fail_after(5):
        assert await master.recv() == {"id": "j", "body": {"n": "j"}}
    stats = await observe(server.master_port)
    assert stats["totals"]["requeued"] == 1 and stats["totals"]["completed"] == 1


async def test_master_that_never_reads_is_dropped_as_a_disconnect(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gloomd.server")
    server = await make_server(max_outbuf=128 * 1024)
    # A master with a tiny receive window that never reads.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.master_port))
    sleeper = Peer(trio.SocketStream(trio.socket.from_stdlib_socket(raw)))
    big = "x" * (64 * 1024)
    await sleeper.send_raw(
        b"".join(
            frame({"action": "submit", "id": i, "type": "big", "body": None}) for i in range(200)
        )
    )
    reader = await Peer.connect(server.master_port)  # a well-behaved master alongside
    assert await reader.request({"action": "submit", "id": "mine", "type": "small", "body": 1}) == {
        "ok": True,
        "id": "mine",
    }
    slave = await join(server.slave_port, "big")
    answered = 0
    with trio.fail_after(20):
        while True:
            msg = await slave.recv()
            if msg.get("action") != "job":
                continue
            await slave.send({"action": "respond", "body": big})
            answered += 1
            if "event=overflow" in log_text(caplog):
                break
    assert answered < 200
    stats = await until_masters(server.master_port, 1)
    # Handled as a disconnect: its queued jobs are gone, its running one orphaned.
    assert {t["type"]: t["queued"] for t in stats["types"]}.get("big", 0) == 0
    assert "reason=outbuf_overflow" in log_text(caplog)
    # The other master was not touched, and the slave is free for new work.
    small = await join(server.slave_port, "small")
    with trio.fail_after(5):
        assert (await small.recv())["id"] == "mine"
        await small.send({"action": "respond", "body": 2})
        assert await reader.recv() == {"id": "mine", "body": 2}
    raw.close()


# ------------------------------------------------------------------ SIGTERM


async def test_sigterm_under_load_answers_every_job_once() -> None:
    """The daemon stops mid-run: every job is answered exactly once (result or
    HALTED), submits after the halt are refused with HALTED, and it exits 0."""
    n = 5_000
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as daemon:
        slaves = [await join(daemon.slave_port, "t") for _ in range(3)]

        async def work(slave: Peer) -> None:
            try:
                while True:
                    msg = await slave.recv()
                    if msg.get("action") == "job":
                        await slave.send({"action": "respond", "body": msg["body"]})
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the daemon closed us: expected

        tally = Tally()
        async with trio.open_nursery() as nursery:
            for slave in slaves:
                nursery.start_soon(work, slave)
            master = await Peer.connect(daemon.master_port)
            await master.send_raw(submits(range(n)))
            signalled = False
            with trio.fail_after(30):
                while True:
                    try:
                        msg = await master.recv()
                    except EOFError:
                        break
                    tally.add(msg)
                    if not signalled and sum(tally.results.values()) == 1_000:
                        daemon.proc.send_signal(signal.SIGTERM)
                        signalled = True
            nursery.cancel_scope.cancel()
        status = await trio.to_thread.run_sync(daemon.proc.wait, 15)
    assert status == 0
    assert signalled
    for job_id in range(n):
        outcomes = tally.results[job_id] + len(tally.failures.get(job_id, []))
        assert outcomes == 1, (job_id, tally.results[job_id], tally.failures.get(job_id))
        assert tally.acks[job_id] <= 1
        if tally.acks[job_id] == 0:  # refused at the halt instead of acked
            assert tally.failures[job_id] == ["HALTED"]
    halted = [i for i, cats in tally.failures.items() if cats == ["HALTED"]]
    assert len(halted) + sum(tally.results.values()) == n and halted
    assert set(cat for cats in tally.failures.values() for cat in cats) == {"HALTED"}
