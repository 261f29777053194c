"""The runner's life around the jobs: scaling, liveness, reconnects, shutdown, burst.

Behaviours 11, 13, 14 and 15 of the reference's list.  Links are cut or
silenced with a proxy between the runner and gloomd; processes are watched
through pidfds; the runner's own event log says when it scaled or reconnected.
"""

from __future__ import annotations

import itertools
import signal
import sys
from typing import Any

import pytest
import trio

import gloom
from gloom import JobError, WaitTimeout
from gloom._connect import Endpoint
from gloom.worker import serve
from gloom.worker.link import LEAVING_TYPE, open_link
from gloomd.config import Config
from gloomd.server import GloomServer

from .workerjobs.gate import Gate
from .workerjobs.proxy import Proxy
from .workerjobs.support import (
    TESTS_DIR,
    StartWorker,
    gone,
    type_stats,
    wait_gone,
    worker_options,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- 11. scaling


async def test_scaling_grows_to_backlog_and_shrinks_idle_ones_only(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("gated", min=1, max=4, scale_interval=0.1, idle_grace=0.2)
    assert runner.size() == 1
    jobs = await master.submit_many([{"type": "w", "body": gate.body(tag=i)} for i in range(10)])
    running = [await gate.next() for _ in range(4)]
    assert len({a.pid for a in running}) == 4 and runner.size() == 4
    stats = await type_stats(master)
    assert (stats["slaves"], stats["running"], stats["queued"]) == (4, 4, 6)
    grown = [e.detail["by"] for e in runner.events if e.kind == "scale_up"]
    assert sum(grown) == 3  # toward the backlog, capped at max
    for _ in range(6):
        await running.pop(0).release()
        running.append(await gate.next())
    for arrival in running:
        await arrival.release()
    assert sorted(r["tag"] for r in [await j.wait(10) for j in jobs]) == list(range(10))

    # One long job keeps its process busy while the pool shrinks around it.
    long_job = await master.submit("w", gate.body(tag="long"))
    long = await gate.next()
    busy_slot = next(
        s.id for s in runner.slots.values() if s.proc is not None and s.proc.pid == long.pid
    )
    with trio.fail_after(20):
        await runner.wait_for(lambda: runner.size() == 1)
    downs = [e for e in runner.events if e.kind == "scale_down"]
    assert len(downs) == 3
    assert busy_slot not in {e.slot for e in downs}  # never the busy one
    gaps = [b.time - a.time for a, b in itertools.pairwise(downs)]
    assert all(gap >= 0.1 * 0.9 for gap in gaps)  # one per tick
    await long.release()
    assert (await long_job.wait(10))["pid"] == long.pid
    await runner.wait_for(lambda: runner.live_pids() == [long.pid])
    for event in downs:
        assert event.pid is not None
        await wait_gone(event.pid)


# ---------------------------------------------------------------- 13. wait


async def test_wait_returns_at_once_times_out_distinctly_and_raises_on_error(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    await start_worker("gated", concurrency=1)
    job = await master.submit("w", gate.body(tag="w"))
    arrival = await gate.next()
    with pytest.raises(WaitTimeout):
        await job.wait(0.2)
    assert not job.done  # the job itself goes on
    await arrival.release()
    released = trio.current_time()
    assert (await job.wait(10))["tag"] == "w"
    assert trio.current_time() - released < 1.0  # woken by the result frame, no poll interval
    failing = await master.submit("w", gate.body(fail=True))
    await (await gate.next()).release()
    with pytest.raises(JobError) as info:
        await failing.wait(10)
    assert info.value.reason["type"] == "RuntimeError"


# ---------------------------------------------------------------- 14. heartbeat, reconnect


async def _proxied(gloomd_server: Any, nursery: trio.Nursery) -> tuple[Proxy, Any]:
    proxy: Proxy = await nursery.start(Proxy(gloomd_server.slave_port).serve)

    class Target:
        slave_port = proxy.port
        master_port = gloomd_server.master_port

    return proxy, Target


async def test_heartbeat_pings_and_silence_makes_it_reconnect(
    gloomd_server: Any, nursery: trio.Nursery, start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    proxy, target = await _proxied(gloomd_server, nursery)
    runner = await start_worker("echo", server=target, concurrency=2, heartbeat=0.2, liveness=2)
    # Idle connections ping every interval.
    await proxy.wait_for(lambda: sum(1 for _, f in proxy.sent if f.get("action") == "ping") >= 4)
    # A daemon that goes silent (connection open, nothing comes back)...
    proxy.freeze()
    await runner.wait_for(lambda: sum(1 for e in runner.events if e.kind == "link_lost") >= 2)
    lost = [e for e in runner.events if e.kind == "link_lost"]
    assert all("no frame from gloomd" in e.detail["reason"] for e in lost)
    # ...is left, and the runner re-joins with every free slot.
    await proxy.wait_for(lambda: proxy.live() == 2 and len(proxy.pairs) == 2)
    with trio.fail_after(10):
        while (await type_stats(master))["idle"] != 2:
            await runner.wait_for(lambda: runner.stats.joins >= 4)
            await trio.lowlevel.checkpoint()
    assert await (await master.submit("w", "after")).wait(10) == "after"


async def test_job_running_when_the_link_drops_is_not_reported_twice(
    gloomd_server: Any,
    nursery: trio.Nursery,
    start_worker: StartWorker,
    master: gloom.AsyncMaster,
    gate: Gate,
) -> None:
    proxy, target = await _proxied(gloomd_server, nursery)
    runner = await start_worker("gated", server=target, concurrency=2)
    job = await master.submit("w", gate.body(tag="once"))
    first = await gate.next()
    assert first.info["attempt"] == 1
    proxy.cut()
    # The daemon requeued it and a reconnected slot runs it again.  (It may
    # first be handed to the other slot's connection before the proxy has
    # closed that one too: then attempt 2 is lost the same way and attempt 3
    # is the one that runs.)
    second = await gate.next()
    assert second.info["id"] == job.id and second.info["attempt"] >= 2
    # The first run was killed, never to answer.
    await wait_gone(first.pid)
    await second.release()
    assert (await job.wait(10))["pid"] == second.pid
    losses = second.info["attempt"] - 1
    stats = await master.stats()
    assert stats["totals"]["completed"] == 1 and stats["totals"]["requeued"] == losses
    assert runner.stats.abandoned <= losses
    assert runner.stats.answers == 1


async def test_reconnects_to_a_restarted_daemon(
    nursery: trio.Nursery, start_worker: StartWorker
) -> None:
    async with trio.open_nursery() as first_run:
        first: GloomServer = await first_run.start(
            GloomServer(Config(master_port=0, slave_port=0)).run
        )
        ports = {"master_port": first.master_port, "slave_port": first.slave_port}
        runner = await start_worker("echo", server=first, concurrency=2)
        first_run.cancel_scope.cancel()
    await runner.wait_for(lambda: sum(1 for e in runner.events if e.kind == "link_lost") >= 2)
    second: GloomServer = await nursery.start(GloomServer(Config(**ports)).run)
    async with gloom.open_master("127.0.0.1", second.master_port) as m:
        with trio.fail_after(10):
            while (await type_stats(m))["idle"] != 2:
                await runner.wait_for(lambda: runner.stats.joins >= 4)
                await trio.lowlevel.checkpoint()
        assert await (await m.submit("w", [1])).wait(10) == [1]


async def test_scaling_rides_out_a_daemon_restart(
    nursery: trio.Nursery, start_worker: StartWorker, gate: Gate
) -> None:
    """The scaler's master connection comes back with the daemon, as the links do."""
    async with trio.open_nursery() as first_run:
        first: GloomServer = await first_run.start(
            GloomServer(Config(master_port=0, slave_port=0)).run
        )
        ports = {"master_port": first.master_port, "slave_port": first.slave_port}
        runner = await start_worker(
            "gated", server=first, min=1, max=3, scale_interval=0.05, idle_grace=60
        )
        first_run.cancel_scope.cancel()
    await runner.wait_for(lambda: any(e.kind == "link_lost" for e in runner.events))
    second: GloomServer = await nursery.start(GloomServer(Config(**ports)).run)
    async with gloom.open_master("127.0.0.1", second.master_port) as m:
        jobs = await m.submit_many([{"type": "w", "body": gate.body(tag=i)} for i in range(3)])
        running = [await gate.next() for _ in range(3)]  # three at once: it grew again
        assert runner.size() == 3 and len({a.pid for a in running}) == 3
        for arrival in running:
            await arrival.release()
        assert sorted(r["tag"] for r in [await j.wait(10) for j in jobs]) == [0, 1, 2]


async def test_leaving_hands_back_an_unstarted_job_without_a_loss(
    gloomd_server: Any, master: gloom.AsyncMaster
) -> None:
    async with open_link(Endpoint("127.0.0.1", gloomd_server.slave_port), heartbeat=0) as link:
        await link.join("w")
        job = await master.submit("w", "unstarted")
        with trio.fail_after(10):
            while link.jobs_waiting == 0:  # the frame is here, not taken
                await trio.sleep(0)
        assert await link.leave() == 1
        stats = await master.stats()
        entry = next(e for e in stats["types"] if e["type"] == "w")
        assert entry["queued"] == 1 and entry["slaves"] == 0
        assert stats["totals"]["requeued"] == 0  # not counted as a lost slave
        assert any(e["type"] == LEAVING_TYPE for e in stats["types"])
    assert not job.done


# ---------------------------------------------------------------- 15. shutdown, burst


async def test_stop_lets_jobs_finish_within_grace_then_halts_the_rest(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("gated", concurrency=2, grace=1.0)
    jobs = await master.submit_many([{"type": "w", "body": gate.body(tag=i)} for i in range(5)])
    a, b = await gate.next(), await gate.next()
    runner.stop()
    stopped = trio.current_time()
    await a.release()  # finishes within the grace period: its result goes out
    by_tag = {job.id: job for job in jobs}
    done = by_tag[a.info["id"]]
    assert (await done.wait(10))["pid"] == a.pid
    halted = by_tag[b.info["id"]]
    with pytest.raises(JobError) as info:
        await halted.wait(10)
    assert info.value.category == "HALTED"
    assert info.value.reason["pid"] == b.pid and info.value.reason["signal"] == signal.SIGKILL
    assert 1.0 <= trio.current_time() - stopped < 4.0
    await runner.wait_for(lambda: not runner.slots)
    # Unstarted jobs stay with the daemon for another worker.
    entry = await type_stats(master)
    assert (entry["queued"], entry["slaves"]) == (3, 0)
    for pid in runner.pids_ever:
        await wait_gone(pid)


async def test_cancelling_serve_drains_like_sigterm(
    gloomd_server: Any, nursery: trio.Nursery, master: gloom.AsyncMaster, gate: Gate
) -> None:
    scope = trio.CancelScope()
    finished = trio.Event()

    async def worker(task_status: trio.TaskStatus[Any]) -> None:
        try:
            with scope:
                await serve(
                    "w",
                    "workerjobs.jobs:gated",
                    task_status=task_status,
                    **worker_options(gloomd_server, grace=5.0),
                )
        finally:
            finished.set()

    runner = await nursery.start(worker)
    job = await master.submit("w", gate.body(tag="drain"))
    arrival = await gate.next()
    scope.cancel()
    # Cancelled, yet the running job may finish and answer...
    await arrival.release()
    assert (await job.wait(10))["tag"] == "drain"
    # ...and then serve returns, its processes gone.
    with trio.fail_after(10):
        await finished.wait()
    assert runner.stats.succeeded == 1 and runner.stats.halted == 0
    for pid in runner.pids_ever:
        assert gone(pid)


async def test_burst_returns_once_the_queue_is_empty(
    gloomd_server: Any, master: gloom.AsyncMaster
) -> None:
    jobs = await master.submit_many([{"type": "w", "body": i} for i in range(7)])
    with trio.fail_after(30):
        stats = await serve(
            "w", "workerjobs.jobs:echo", burst=True, **worker_options(gloomd_server)
        )
    assert stats.succeeded == 7 and stats.jobs_started == 7
    assert [await job.wait(1) for job in jobs] == list(range(7))
    assert (await master.stats())["connections"]["slaves"] == 0


async def test_cli_sigterm_stops_cleanly(
    gloomd_server: Any, master: gloom.AsyncMaster, gate: Gate
) -> None:
    cmd = [
        sys.executable, "-m", "gloom.worker", "--type", "cli", "--handler", "workerjobs.jobs:gated",
        "--import-path", TESTS_DIR, "--concurrency", "2", "--grace", "1",
        "--slave-port", str(gloomd_server.slave_port),
        "--master-port", str(gloomd_server.master_port),
        "--log-level", "WARNING",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(cmd)
    try:
        finishing = await master.submit("cli", gate.body(tag="fin"))
        stuck = await master.submit("cli", gate.body(tag="stuck"))
        queued = await master.submit("cli", gate.body(tag="queued"))
        arrivals = {a.info["tag"]: a for a in [await gate.next(), await gate.next()]}
        proc.send_signal(signal.SIGTERM)
        await arrivals["fin"].release()
        assert (await finishing.wait(10))["tag"] == "fin"
        with pytest.raises(JobError) as info:
            await stuck.wait(10)
        assert info.value.category == "HALTED"
        with trio.fail_after(10):
            assert await proc.wait() == 0
        for arrival in arrivals.values():
            await wait_gone(arrival.pid)
        entry = await type_stats(master, "cli")
        assert (entry["queued"], entry["slaves"]) == (1, 0)
        assert not queued.done
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
