"""The job lifecycle end to end, over sockets, frames built by hand (tests/support/wire):
retries over real slaves, a delayed job on an injected clock, two masters on one
unique job, paging through 10,000 queued jobs, dead letters and their limits, and
a kick of 100,000 dead jobs while other traffic flows."""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import Any

import pytest
import trio
import trio.testing

from gloomd.server import GloomServer
from tests.support.daemon import spawn_gloomd
from tests.support.wire import Peer, frame, join

pytestmark = pytest.mark.timeout(120)


async def submit(master: Peer, job_id: Any, job_type: Any = "t", **extra: Any) -> Any:
    return await master.request(
        {"action": "submit", "id": job_id, "type": job_type, "body": job_id, **extra}
    )


async def no_job_yet(slave: Peer) -> None:
    """A round trip on the slave's own connection: a job frame sent before the
    ping's answer would arrive first."""
    assert await slave.request({"action": "ping"}) == {"ok": True}


# ------------------------------------------------------------------ retries, real slaves


def test_retries_over_real_slaves_fail_k_times_then_succeed() -> None:
    """Three slaves in turn fail the job (ERROR, TIMEOUT, ERROR); the fourth
    delivery succeeds.  The master hears nothing but the result."""

    def recv(sock: socket.socket) -> Any:
        import json

        head = b""
        while len(head) < 4:
            head += sock.recv(4 - len(head))
        (size,) = struct.unpack(">I", head)
        body = b""
        while len(body) < size:
            body += sock.recv(size - len(body))
        return json.loads(body)

    with spawn_gloomd("--no-http") as daemon:
        master = socket.create_connection(daemon.master_addr, timeout=10)
        slaves = [socket.create_connection(daemon.slave_addr, timeout=10) for _ in range(2)]
        try:
            for slave in slaves:
                slave.sendall(frame({"action": "join", "type": "flaky"}))
                assert recv(slave) == {"ok": True}
            job = {"action": "submit", "id": "j", "type": "flaky", "body": 1}
            master.sendall(frame({**job, "retries": 3, "backoff": 0.001}))
            assert recv(master) == {"ok": True, "id": "j"}
            attempts = []
            for turn, category in enumerate(["ERROR", "TIMEOUT", "ERROR", None]):
                # Whichever slave is idle longest gets it: alternate between them.
                slave = slaves[turn % 2]
                job = recv(slave)
                assert job["id"] == "j" and job["body"] == 1
                attempts.append(job.get("attempt", 1))
                if category is None:
                    slave.sendall(frame({"action": "respond", "body": "finally"}))
                else:
                    slave.sendall(frame({"action": "fail", "error": category, "reason": turn}))
                assert recv(slave) == {"ok": True}
            assert attempts == [1, 2, 3, 4]
            assert recv(master) == {"id": "j", "body": "finally"}
            master.sendall(frame({"action": "stats"}))
            totals = recv(master)["stats"]["totals"]
            assert (totals["retried"], totals["completed"], totals["failed"]) == (3, 1, 0)
        finally:
            for sock in (master, *slaves):
                sock.close()


# ------------------------------------------------------------------ delay, injected clock


async def test_a_delayed_job_is_not_delivered_before_its_time_and_is_after(
    mock_clock: trio.testing.MockClock, gloomd_server: GloomServer, broker: str
) -> None:
    """The daemon runs on the test's trio clock, which stands still until jumped."""
    if broker == "cluster":
        await _delayed_job_on_redis_time(mock_clock, gloomd_server)
        return
    slave = await join(gloomd_server.slave_port, "later")
    master = await Peer.connect(gloomd_server.master_port)
    assert await submit(master, "d", "later", delay=30) == {"ok": True, "id": "d"}
    stats = (await master.request({"action": "stats", "type": "later"}))["stats"]
    assert stats["types"][0]["delayed"] == 1
    await no_job_yet(slave)
    mock_clock.jump(29.9)
    await trio.testing.wait_all_tasks_blocked()
    await no_job_yet(slave)
    mock_clock.jump(0.1)
    job = await slave.recv()
    assert job == {"action": "job", "id": "d", "type": "later", "body": "d"}
    page = await master.request({"action": "jobs", "type": "later"})
    assert [(row["id"], row["state"]) for row in page["jobs"]] == [("d", "running")]


async def _delayed_job_on_redis_time(mock_clock: trio.testing.MockClock, server: Any) -> None:
    """The cluster's variant: its deadlines are on Redis' clock (TIME, one
    clock for every daemon), which no test clock moves; and a trio clock that
    stands still would stop the engine's own timers (its Redis timeouts, its
    tick).  So the trio clock runs at real speed and the delay is short: the
    job must not come before `delay` seconds after its submit was sent, and
    must come soon after."""
    mock_clock.rate = 1.0
    delay = 1.0
    slave = await join(server.slave_port, "later")
    master = await Peer.connect(server.master_port)
    sent = time.monotonic()
    assert await submit(master, "d", "later", delay=delay) == {"ok": True, "id": "d"}
    stats = (await master.request({"action": "stats", "type": "later"}))["stats"]
    assert stats["types"][0]["delayed"] == 1
    await no_job_yet(slave)
    with trio.fail_after(delay + 5):
        job = await slave.recv()
    assert time.monotonic() - sent >= delay
    assert job == {"action": "job", "id": "d", "type": "later", "body": "d"}
    page = await master.request({"action": "jobs", "type": "later"})
    assert [(row["id"], row["state"]) for row in page["jobs"]] == [("d", "running")]


# ------------------------------------------------------------------ unique


async def test_two_masters_on_one_unique_job_both_hear_it_and_it_outlives_the_first(
    gloomd_server: GloomServer,
) -> None:
    first = await Peer.connect(gloomd_server.master_port)
    second = await Peer.connect(gloomd_server.master_port)
    assert await submit(first, "u", unique=True) == {"ok": True, "id": "u"}
    assert await submit(second, "u", unique=True) == {"ok": True, "id": "u", "attached": True}
    slave = await join(gloomd_server.slave_port, "t")
    assert (await slave.recv())["id"] == "u"
    await slave.send({"action": "progress", "body": 50})
    for master in (first, second):
        assert await master.recv() == {"id": "u", "progress": 50}
    await first.aclose()
    # The job survives its first master: the second still gets progress and result.
    await slave.send({"action": "progress", "body": 90})
    assert await second.recv() == {"id": "u", "progress": 90}
    assert await slave.request({"action": "respond", "body": "done"}) == {"ok": True}
    assert await second.recv() == {"id": "u", "body": "done"}
    totals = (await second.request({"action": "stats"}))["stats"]["totals"]
    assert (totals["submitted"], totals["completed"], totals["withdrawn"]) == (1, 1, 0)


# ------------------------------------------------------------------ jobs


async def test_jobs_pages_through_10000_queued_jobs_in_exact_dispatch_order(
    gloomd_server: GloomServer,
) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    rng = random.Random(14)
    total = 10_000
    for job_id in range(total):
        await master.send(
            {"action": "submit", "id": job_id, "type": "bulk", "priority": rng.randint(-3, 3),
             "body": None}
        )  # fmt: skip
    for job_id in range(total):
        assert await master.recv() == {"ok": True, "id": job_id}
    listed: list[int] = []
    request: dict[str, Any] = {"action": "jobs", "type": "bulk", "state": "queued", "limit": 1000}
    pages = 0
    while True:
        page = await master.request(request)
        assert len(page["jobs"]) <= 1000
        listed += [row["id"] for row in page["jobs"]]
        pages += 1
        if page["next"] is None:
            break
        request["cursor"] = page["next"]
    assert len(listed) == total and pages <= 11
    # The order a slave is then handed them in.
    slave = await join(gloomd_server.slave_port, "bulk")
    dispatched = []
    for _ in range(total):
        job = await slave.recv()
        dispatched.append(job["id"])
        await slave.send({"action": "respond", "body": None})
        assert await slave.recv() == {"ok": True}
    assert listed == dispatched


async def test_jobs_never_answers_more_than_1000(gloomd_server: GloomServer) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    for job_id in range(1500):
        await master.send({"action": "submit", "id": job_id, "type": "t", "body": None})
    for _ in range(1500):
        await master.recv()
    assert await master.request({"action": "jobs", "limit": 1001}) == {
        "error": "invalid_type",
        "reason": "limit",
    }
    page = await master.request({"action": "jobs", "limit": 1000})
    assert len(page["jobs"]) == 1000 and page["next"] is not None
    assert len((await master.request({"action": "jobs"}))["jobs"]) == 100


# ------------------------------------------------------------------ dead letters


def test_max_dead_is_enforced_and_logged() -> None:
    with spawn_gloomd("--no-http", "--max-dead", "3", capture_logs=True) as daemon:
        with socket.create_connection(daemon.master_addr, timeout=10) as master:
            master.sendall(frame({"action": "submit", "id": "gate", "type": "g", "body": 0}))
            for n in range(5):
                master.sendall(
                    frame({"action": "submit", "id": n, "type": "t", "body": 0, "detach": True,
                           "after": ["gate"]})
                )  # fmt: skip
            master.sendall(frame({"action": "cancel", "id": "gate"}))  # its dependents die
            master.sendall(frame({"action": "jobs", "state": "dead"}))
            frames = _read_frames(master, until=lambda f: "jobs" in f)
            assert [row["id"] for row in frames[-1]["jobs"]] == [2, 3, 4]
        assert daemon.stop() == 0
        assert daemon.proc.stderr is not None
        log = daemon.proc.stderr.read().decode()
    dropped = [line for line in log.splitlines() if "event=dead_dropped" in line]
    assert len(dropped) == 2 and "id=0" in dropped[0] and "type=t" in dropped[0]


def _read_frames(sock: socket.socket, until: Any) -> list[Any]:
    import json

    buf = b""
    frames: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        while len(buf) >= 4:
            (size,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + size:
                break
            frames.append(json.loads(buf[4 : 4 + size]))
            buf = buf[4 + size :]
            if until(frames[-1]):
                return frames
        buf += sock.recv(65536)
    raise AssertionError(f"no such frame in {frames!r}")


async def test_a_kick_of_100000_dead_jobs_does_not_stall_other_connections(
    gloomd_server: GloomServer, broker: str
) -> None:
    """Round trips of plain jobs keep going while the kick works through its
    chunks, and none of them waits for the whole kick."""
    total = 100_000
    if broker == "cluster":
        # The gate's cancel below fails all its dependents in one atomic
        # Redis call (library.lua, end_job), which holds Redis ~50 us per
        # job: 100,000 would hold it past the daemons' 5 s Redis timeout.
        # The kick itself goes in chunks (KICK_STEP), one per pipeline of
        # its daemon, as on one daemon; 20,000 still makes 80 of them.
        total = 20_000
    # Detached jobs waiting on a gate, from a master that leaves; the gate's
    # cancel makes them all dead letters at once.
    feeder = await Peer.connect(gloomd_server.master_port)
    await submit(feeder, "gate", "gate", detach=True)
    for job_id in range(total):
        await feeder.send(
            {"action": "submit", "id": job_id, "type": "bulk", "body": None, "detach": True,
             "after": ["gate"]}
        )  # fmt: skip
    for _ in range(total):
        await feeder.recv()
    await feeder.aclose()
    admin = await Peer.connect(gloomd_server.master_port)
    assert await admin.request({"action": "cancel", "id": "gate"}) == {"ok": True, "id": "gate"}
    stats = (await admin.request({"action": "stats", "type": "bulk"}))["stats"]
    assert stats["types"][0]["dead"] == total

    master = await Peer.connect(gloomd_server.master_port)
    slave = await join(gloomd_server.slave_port, "plain")
    trips: list[tuple[float, float]] = []  # (start, seconds)
    kick_done = trio.Event()

    async def plain_round_trips() -> None:
        n = 0
        while not kick_done.is_set():
            n += 1
            started = time.perf_counter()
            await master.send({"action": "submit", "id": f"p{n}", "type": "plain", "body": n})
            assert await master.recv() == {"ok": True, "id": f"p{n}"}
            assert (await slave.recv())["id"] == f"p{n}"
            await slave.send({"action": "respond", "body": n})
            assert await slave.recv() == {"ok": True}
            assert await master.recv() == {"id": f"p{n}", "body": n}
            trips.append((started, time.perf_counter() - started))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(plain_round_trips)
        await trio.lowlevel.checkpoint()  # let the plain traffic start first
        kick_started = time.perf_counter()
        assert await admin.request({"action": "kick", "type": "bulk"}) == {
            "ok": True,
            "kicked": total,
        }
        kick_seconds = time.perf_counter() - kick_started
        kick_done.set()
    during = [seconds for started, seconds in trips if started >= kick_started]
    during.sort()
    # The kick took many passes of the loop, and plain jobs went round between
    # them: most round trips took a small part of the kick's time.  (In one
    # pass, none would have: each would wait for the whole kick.)
    assert len(during) >= 5, (
        len(during),
        kick_seconds,
        [(round(s - kick_started, 3), round(d, 3)) for s, d in trips],
    )
    p90 = during[int(len(during) * 0.9)]
    assert p90 < kick_seconds / 4, (p90, kick_seconds)
    stats = (await admin.request({"action": "stats", "type": "bulk"}))["stats"]
    assert stats["types"][0]["queued"] == total and stats["types"][0]["dead"] == 0
