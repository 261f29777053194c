"""The trio client end to end against a real gloomd on 127.0.0.1.

Most tests run the daemon in the test's own trio run (the `gloomd_server`
fixture); the restart tests need a process they can kill, so they use
`spawn_gloomd`.  Nothing waits by sleeping: slaves and masters hand each other
trio Events, and every wait is bounded by `fail_after`.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import gloom
from gloomd.server import GloomServer
from tests.support.daemon import spawn_gloomd

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
Handler = Callable[[gloom.SlaveJob], Awaitable[None]]


async def serve(
    port: int,
    job_type: Any,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[gloom.AsyncSlave] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """A slave that has joined by the time `nursery.start` returns."""
    async with gloom.open_slave(HOST, port, **options) as slave:
        await slave.join(job_type)
        task_status.started(slave)
        async for job in slave.jobs():
            await handler(job)


async def square(job: gloom.SlaveJob) -> None:
    await job.respond(job.body * job.body)


async def test_submit_wait_and_states(gloomd_server: GloomServer, nursery: trio.Nursery) -> None:
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        job = await master.submit("square", 7, priority=2, id="seven")
        assert (job.id, job.type, job.state, job.done) == ("seven", "square", "queued", False)
        await nursery.start(serve, gloomd_server.slave_port, "square", square)
        with trio.fail_after(10):
            assert await job.wait() == 49
        assert (job.state, job.result, job.error, job.done) == ("done", 49, None, True)
        assert isinstance(job.state, gloom.JobState)
        # An auto id is fresh each time.
        a, b = await master.submit("square", 1), await master.submit("square", 2)
        assert a.id != b.id and isinstance(a.id, str)


async def test_results_out_of_order_reach_their_own_jobs(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    held: list[gloom.SlaveJob] = []
    all_held = trio.Event()

    async def hold(job: gloom.SlaveJob) -> None:
        held.append(job)
        if len(held) == 3:
            all_held.set()

    for _ in range(3):
        await nursery.start(serve, gloomd_server.slave_port, "hold", hold)
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        jobs = [await master.submit("hold", n) for n in (1, 2, 3)]
        finished: list[Any] = []

        async def record(job: gloom.Job) -> None:
            await job.wait()
            finished.append(job.id)

        with trio.fail_after(10):
            await all_held.wait()
            async with trio.open_nursery() as waiters:
                for job in jobs:
                    waiters.start_soon(record, job)
                for slave_job in sorted(held, key=lambda j: -j.body):
                    await slave_job.respond({"for": slave_job.body})
        assert [job.result for job in jobs] == [{"for": 1}, {"for": 2}, {"for": 3}]
        assert finished == [jobs[2].id, jobs[1].id, jobs[0].id]


async def test_five_thousand_pipelined_submits(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    count = 5000
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        with trio.fail_after(20):
            jobs = await master.submit_many({"type": "sq", "body": n} for n in range(count))
            assert len(jobs) == count and all(job.state == "queued" for job in jobs)
            stats = await master.stats()
            assert [row["queued"] for row in stats["types"] if row["type"] == "sq"] == [count]
            for _ in range(4):
                await nursery.start(serve, gloomd_server.slave_port, "sq", square)
            results = [await job.wait() for job in jobs]
        assert results == [n * n for n in range(count)]


async def test_submit_refusals(gloomd_server: GloomServer) -> None:
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        await master.submit("nobody", 1, id="dup")
        with pytest.raises(gloom.ServerError) as refused:
            await master.submit("nobody", 1, id="dup")
        assert (refused.value.error, refused.value.reason) == ("id_exists", "dup")
        jobs = await master.submit_many(
            [
                {"type": "nobody", "body": 1, "id": "a"},
                {"type": "nobody", "body": 2, "id": "dup"},
                {"type": "nobody", "body": 3, "id": 5, "priority": 9},
            ]
        )
        assert [job.state for job in jobs] == ["queued", "failed", "queued"]
        assert isinstance(jobs[1].error, gloom.ServerError) and jobs[1].error.error == "id_exists"
        with pytest.raises(gloom.ServerError):
            await jobs[1].wait()
        with pytest.raises(TypeError):
            await master.submit_many([{"type": "x", "bdy": 1}])


async def test_progress_streaming(gloomd_server: GloomServer, nursery: trio.Nursery) -> None:
    taken = trio.Event()
    go = trio.Event()
    finish = trio.Event()

    async def report(job: gloom.SlaveJob) -> None:
        taken.set()
        await go.wait()
        for step in (10, 20, 30, 40, 50):
            await job.progress({"done": step, "total": 50})
        await finish.wait()
        await job.respond("ok")

    await nursery.start(serve, gloomd_server.slave_port, "prog", report)
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        job = await master.submit("prog", None)
        seen: list[Any] = []
        states: list[str] = []

        async def watch() -> None:
            async for value in job.progress_updates():
                seen.append(value["done"])
                states.append(job.state.value)
                if value["done"] == 50:
                    finish.set()

        with trio.fail_after(10):
            await taken.wait()
            assert job.state == "queued"  # the protocol does not announce a start
            async with trio.open_nursery() as inner:
                inner.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                go.set()
                assert await job.wait() == "ok"
        assert seen == [10, 20, 30, 40, 50]
        assert states == ["running"] * 5
        assert job.progress == {"done": 50, "total": 50}
        # After the end, the iterator is empty at once.
        assert [value async for value in job.progress_updates()] == []


async def test_cancel(gloomd_server: GloomServer, nursery: trio.Nursery) -> None:
    taken = trio.Event()
    release = trio.Event()

    async def hold(job: gloom.SlaveJob) -> None:
        taken.set()
        await release.wait()
        await job.respond(None)

    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        queued = await master.submit("c", 1)
        assert await queued.cancel() is True
        assert queued.state == "cancelled"
        with pytest.raises(gloom.JobCancelled) as cancelled:
            await queued.wait()
        assert cancelled.value.id == queued.id and not isinstance(
            cancelled.value, gloom.ServerError
        )
        with pytest.raises(gloom.ServerError) as unknown:
            await master.cancel(queued.id)
        assert unknown.value.error == "unknown_id"

        running = await master.submit("c", 2)
        await nursery.start(serve, gloomd_server.slave_port, "c", hold)
        with trio.fail_after(10):
            await taken.wait()
            with pytest.raises(gloom.ServerError) as busy:
                await master.cancel(running.id)
            assert (busy.value.error, busy.value.reason) == ("invalid_state", "running")
            release.set()
            assert await running.wait() is None


async def test_job_error_reaches_the_master(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    async def explode(job: gloom.SlaveJob) -> None:
        await job.fail(
            "ERROR", {"type": "ValueError", "message": "bad input", "traceback": "Traceback: ..."}
        )

    await nursery.start(serve, gloomd_server.slave_port, "boom", explode)
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        job = await master.submit("boom", {"x": 1})
        with trio.fail_after(10), pytest.raises(gloom.JobError) as raised:
            await job.wait()
        error = raised.value
        assert (error.id, error.category, error.traceback) == (job.id, "ERROR", "Traceback: ...")
        assert error.reason["message"] == "bad input" and error.error == "job_error"
        assert "ValueError: bad input" in str(error)
        assert job.state == "failed" and job.error is error


async def test_job_timeout_is_a_failure_and_wait_timeout_is_not(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    held = trio.Event()
    attempts: list[Any] = []

    async def never_answer(job: gloom.SlaveJob) -> None:
        attempts.append((job.attempt, job.timeout))
        held.set()
        await trio.sleep_forever()

    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        queued = await master.submit("slow", 1)
        with pytest.raises(gloom.WaitTimeout):
            await queued.wait(timeout=0.05)
        assert queued.state == "queued" and queued.error is None  # the job is untouched
        with pytest.raises(trio.TooSlowError):
            await queued.wait(timeout=0)
        assert await queued.cancel()

        await nursery.start(serve, gloomd_server.slave_port, "slow", never_answer)
        timed = await master.submit("slow", 2, timeout=0.2)
        with trio.fail_after(10), pytest.raises(gloom.JobFailed) as failed:
            await timed.wait()
        assert failed.value.category == "TIMEOUT" and not isinstance(failed.value, gloom.JobError)
        assert not isinstance(failed.value, trio.TooSlowError)
        assert attempts == [(1, 0.2)]


async def test_detached_job_and_result(gloomd_server: GloomServer, nursery: trio.Nursery) -> None:
    answered = trio.Event()

    async def answer(job: gloom.SlaveJob) -> None:
        await job.respond({"done": job.body})
        answered.set()

    async with gloom.open_master(HOST, gloomd_server.master_port) as first:
        job = await first.submit("det", 5, id="bg-1", detach=True)
    async with gloom.open_master(HOST, gloomd_server.master_port) as other:
        with pytest.raises(gloom.ServerError) as not_ready:
            await other.result("bg-1")
        assert (not_ready.value.error, not_ready.value.reason) == ("not_ready", "bg-1")
        await nursery.start(serve, gloomd_server.slave_port, "det", answer)
        with trio.fail_after(10):
            await answered.wait()
        assert await other.result("bg-1") == {"done": 5}
        with pytest.raises(gloom.ServerError) as unknown:
            await other.result("never-submitted")
        assert unknown.value.error == "unknown_id"
    assert job.id == "bg-1"


async def test_after_dependencies(gloomd_server: GloomServer, nursery: trio.Nursery) -> None:
    async def maybe_fail(job: gloom.SlaveJob) -> None:
        if job.body == "bad":
            await job.fail("ERROR", "nope")
        else:
            await job.respond(job.body)

    await nursery.start(serve, gloomd_server.slave_port, "dep", maybe_fail)
    async with gloom.open_master(HOST, gloomd_server.master_port) as master:
        good = await master.submit("dep", "good")
        bad = await master.submit("dep", "bad")
        after_good = await master.submit("dep", "next", after=[good.id])
        after_bad = await master.submit("dep", "never", after=[good.id, bad.id])
        with trio.fail_after(10):
            assert await after_good.wait() == "next"
            with pytest.raises(gloom.JobFailed) as failed:
                await after_bad.wait()
        assert failed.value.category == "DEPENDENCY"
        with pytest.raises(gloom.ServerError):
            await master.submit("dep", 1, after=["no-such-job"])


async def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now.
    with trio.fail_after(10):
        with pytest.raises(gloom.TransportError, match="cannot reach gloomd"):
            async with gloom.open_master(HOST, port):
                pass
        with pytest.raises(gloom.TransportError):
            async with gloom.open_slave(HOST, port):
                pass


async def test_exceptions_leave_the_block_unwrapped(gloomd_server: GloomServer) -> None:
    with pytest.raises(KeyError):
        async with gloom.open_master(HOST, gloomd_server.master_port):
            raise KeyError("mine")


async def test_daemon_killed_during_a_wait() -> None:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as daemon:
        async with gloom.open_master(HOST, daemon.master_port) as master:
            job = await master.submit("nobody-home", 1)
            outcome: list[BaseException] = []

            async def wait() -> None:
                try:
                    await job.wait()
                except gloom.GloomError as exc:
                    outcome.append(exc)

            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                daemon.proc.send_signal(signal.SIGKILL)
                with trio.fail_after(10):
                    await job._done.wait()
            assert time.monotonic() - started < 10
            (error,) = outcome
            assert isinstance(error, gloom.TransportError)
            assert job.state == "failed" and not master.connected
            with pytest.raises(gloom.TransportError):
                await master.submit("nobody-home", 2)
            with pytest.raises(gloom.TransportError):
                await master.stats()


async def test_slave_reconnects_and_rejoins_after_a_restart() -> None:
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    held = trio.Event()
    holding: list[gloom.SlaveJob] = []

    async def handler(job: gloom.SlaveJob) -> None:
        if job.body == "hold":
            holding.append(job)
            held.set()
            return
        await job.respond(f"second daemon says {job.body}")

    with spawn_gloomd(env=quiet) as first:
        ports = ("--master-port", str(first.master_port), "--slave-port", str(first.slave_port))
        async with trio.open_nursery() as nursery:
            slave: gloom.AsyncSlave = await nursery.start(
                lambda task_status: serve(
                    first.slave_port,
                    "r",
                    handler,
                    task_status=task_status,
                    reconnect_delay=0.02,
                    max_reconnect_delay=0.1,
                )
            )
            async with gloom.open_master(HOST, first.master_port) as master:
                await master.submit("r", "hold")
                with trio.fail_after(10):
                    await held.wait()
            await trio.to_thread.run_sync(first.stop, signal.SIGKILL)
            (orphan,) = holding
            with trio.fail_after(10):
                while orphan.alive:
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.sleep(0)
                with pytest.raises(gloom.TransportError):
                    await orphan.respond("too late")
            with spawn_gloomd(*ports, env=quiet) as second:
                assert second.slave_port == first.slave_port
                async with gloom.open_master(HOST, second.master_port) as master:
                    job = await master.submit("r", 2)
                    with trio.fail_after(20):
                        assert await job.wait() == "second daemon says 2"
                assert slave.reconnects >= 1 and slave.connected
                nursery.cancel_scope.cancel()
