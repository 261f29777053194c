"""The worker runner end to end against a real gloomd: results, errors, kills, pool.

Behaviours 1-10 of the reference's list (shared/reference/worker-runners.md,
section 4).  Every job runs in a real pool process; tests learn that a job
started, and which process runs it, from the gate it reports to, and learn
that a process died from its pidfd, never from a sleep.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

import gloom
from gloom import JobError, JobFailed

from .workerjobs.gate import Gate
from .workerjobs.support import StartWorker, gone, type_stats, wait_gone

pytestmark = pytest.mark.timeout(60)

BIG = 2**70 + 1


# ---------------------------------------------------------------- 1. results


async def test_function_result_is_the_exact_json_value(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    runner = await start_worker("echo_job")
    body = {
        "args": [1, "two", 3.5, None, True],
        "kwargs": {"big": BIG, "text": "žluť 😀"},
        "empty": {},
    }
    job = await master.submit("w", body)
    result = await job.wait(10)
    assert result["body"] == body
    assert result["body"]["kwargs"]["big"] == BIG  # beyond 64 bits, still exact
    assert result["id"] == job.id and result["type"] == "w" and result["attempt"] == 1
    assert result["timeout"] == 300  # the runner's default limit, as the job saw it
    assert result["pid"] in runner.live_pids()


async def test_plain_function_null_result_and_async_handler(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    await start_worker("echo", type="plain", concurrency=1)
    await start_worker("async_echo", type="async", concurrency=1)
    assert await (await master.submit("plain", None)).wait(10) is None
    assert await (await master.submit("plain", [1, 2])).wait(10) == [1, 2]
    job = await master.submit("async", {"k": 1})
    assert await job.wait(10) == {"body": {"k": 1}, "async": True, "id": job.id}


async def test_progress_reaches_the_master(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    await start_worker("reporter", concurrency=1)
    job = await master.submit("w", {"steps": 3})
    seen = [value async for value in job.progress_updates()]
    assert [v["step"] for v in seen] == [0, 1, 2]
    assert await job.wait(10) == "reported"


# ---------------------------------------------------------------- 2. class handlers


async def test_class_handler_gets_a_fresh_instance_per_job(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    runner = await start_worker(
        "Counter.bump", concurrency=1, class_kwargs={"start": 10, "step": 5}
    )
    results = [await (await master.submit("w", None)).wait(10) for _ in range(3)]
    # Same process every time, a new instance every time, no count carried over.
    assert {r["pid"] for r in results} == set(runner.live_pids())
    assert [r["count"] for r in results] == [15, 15, 15]
    assert [r["instances"] for r in results] == [1, 2, 3]


async def test_class_args_positional(start_worker: StartWorker, master: gloom.AsyncMaster) -> None:
    await start_worker("Counter.bump", concurrency=1, class_args=[100, -1])
    assert (await (await master.submit("w", None)).wait(10))["count"] == 99


# ---------------------------------------------------------------- 3. exceptions


async def test_exception_is_an_error_with_type_message_traceback(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    runner = await start_worker("boom", concurrency=1)
    pid = runner.live_pids()[0]
    job = await master.submit("w", "payload")
    with pytest.raises(JobError) as info:
        await job.wait(10)
    error = info.value
    assert error.category == "ERROR" and error.id == job.id
    assert error.reason["type"] == "ValueError"
    assert error.reason["message"] == "boom: payload"
    assert "raise ValueError" in error.traceback and "jobs.py" in error.traceback
    # The process survived its job's exception and serves the next one.
    assert runner.live_pids() == [pid] and runner.stats.spawned == 1


async def test_a_returned_error_string_is_a_result(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    await start_worker("looks_like_error", concurrency=1)
    job = await master.submit("w", None)
    assert await job.wait(10) == "ValueError: boom"
    assert job.error is None


# ---------------------------------------------------------------- 5. unencodable results


async def test_unencodable_result_is_a_serialisation_error(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    runner = await start_worker("unencodable", concurrency=1)
    pid = runner.live_pids()[0]
    with pytest.raises(JobError) as info:
        await (await master.submit("w", None)).wait(10)
    assert info.value.category == "ERROR"
    assert info.value.reason["type"] == "SerializationError"
    assert "set" in info.value.reason["message"]
    # Healthy afterwards, same process.
    runner2_job = await master.submit("w", None)
    with pytest.raises(JobError):
        await runner2_job.wait(10)
    assert runner.live_pids() == [pid] and runner.stats.errors == 2 and runner.stats.crashes == 0


# ---------------------------------------------------------------- 6, 7. timeouts


async def test_timeout_kills_the_job_and_refills_the_pool(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("sleeper", timeout=0.5, grace=2.0)
    job = await master.submit("w", gate.body())
    arrival = await gate.next()
    started = trio.current_time()
    with pytest.raises(JobError) as info:
        await job.wait(10)
    reason = info.value.reason
    assert info.value.category == "TIMEOUT"
    assert reason["type"] == "JobTimeout" and reason["pid"] == arrival.pid
    assert reason["signal"] == signal.SIGTERM  # it obeyed SIGTERM; no SIGKILL needed
    assert gone(arrival.pid)
    # It died at the deadline, not at the end of the grace period.
    exit_event = next(e for e in runner.events if e.kind == "exited" and e.pid == arrival.pid)
    start_event = next(e for e in runner.events if e.kind == "job_started" and e.pid == arrival.pid)
    assert 0.45 <= exit_event.time - start_event.time < 0.5 + 1.5
    assert trio.current_time() - started < 5
    # The replacement was ready before the failure was reported.
    assert len(runner.live_pids()) == 2 and arrival.pid not in runner.live_pids()


async def test_job_timeout_from_the_frame_wins_when_smaller(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("sleeper", timeout=300, concurrency=1)
    job = await master.submit("w", gate.body(), timeout=0.5)
    arrival = await gate.next()
    assert arrival.info["attempt"] == 1
    with pytest.raises(JobFailed) as info:  # the daemon's own TIMEOUT reaches the master first
        await job.wait(10)
    assert info.value.category == "TIMEOUT"
    await wait_gone(arrival.pid)
    await runner.wait_for(lambda: runner.stats.timeouts == 1)


async def test_sigterm_ignorer_is_sigkilled_after_grace_with_its_children(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("stubborn", timeout=0.5, grace=0.5, concurrency=1)
    job = await master.submit("w", gate.body())
    arrival = await gate.next()
    grandchild = arrival.info["grandchild"]
    with pytest.raises(JobError) as info:
        await job.wait(10)
    assert info.value.category == "TIMEOUT"
    assert info.value.reason["signal"] == signal.SIGKILL
    await wait_gone(grandchild)  # same process group: killed with it
    assert gone(arrival.pid) and gone(grandchild)
    exit_event = next(e for e in runner.events if e.kind == "exited" and e.pid == arrival.pid)
    start_event = next(e for e in runner.events if e.kind == "job_started" and e.pid == arrival.pid)
    assert exit_event.time - start_event.time >= 0.5 + 0.5 - 0.05  # SIGKILL only after the grace


# ---------------------------------------------------------------- 8. crashes


@pytest.mark.parametrize(
    ("handler", "body", "expected"),
    [("crash_exit", 7, {"exitcode": 7}), ("crash_signal", None, {"signal": signal.SIGKILL})],
)
async def test_crash_is_reported_with_exit_status_and_the_pool_refilled(
    start_worker: StartWorker,
    master: gloom.AsyncMaster,
    handler: str,
    body: Any,
    expected: dict[str, int],
) -> None:
    runner = await start_worker(handler)
    before = set(runner.live_pids())
    job = await master.submit("w", body)
    with pytest.raises(JobError) as info:
        await job.wait(10)
    reason = info.value.reason
    assert info.value.category == "CRASH"
    assert reason["type"] == "WorkerCrashed"
    assert {k: reason[k] for k in expected} == expected
    assert reason["pid"] in before and gone(reason["pid"])
    after = set(runner.live_pids())
    assert len(after) == 2 and reason["pid"] not in after
    # Exactly one delivery: a crash is reported, not requeued.
    stats = await master.stats()
    assert stats["totals"]["requeued"] == 0


async def test_crash_loop_backs_off(start_worker: StartWorker, master: gloom.AsyncMaster) -> None:
    runner = await start_worker("crash_exit", concurrency=1, crash_backoff=0.1)
    for _ in range(3):
        with pytest.raises(JobError):
            await (await master.submit("w", 3)).wait(10)
    delays = [e.detail["delay"] for e in runner.events if e.kind == "backoff"]
    assert delays == [0.1, 0.2]  # none after the first crash, then doubling
    assert runner.stats.crashes == 3 and len(runner.live_pids()) == 1


# ---------------------------------------------------------------- 9. recycling


async def test_recycling_changes_pid_and_loses_nothing(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    runner = await start_worker("echo_job", max_jobs_per_process=3)
    jobs = await master.submit_many([{"type": "w", "body": i} for i in range(12)])
    results = [await job.wait(10) for job in jobs]
    assert [r["body"] for r in results] == list(range(12))  # every job, once, in its own answer
    per_pid: dict[int, int] = {}
    for r in results:
        per_pid[r["pid"]] = per_pid.get(r["pid"], 0) + 1
    assert max(per_pid.values()) <= 3 and len(per_pid) >= 4
    stats = await master.stats()
    assert stats["totals"]["completed"] == 12 and stats["totals"]["requeued"] == 0
    recycled = [e for e in runner.events if e.kind == "recycled"]
    assert len(recycled) == sum(1 for count in per_pid.values() if count == 3) >= 2
    # Each successor was started while its predecessor ran its last job: never
    # more than one spawn per recycle, and the pool is at size afterwards.
    assert runner.stats.spawned == 2 + len(recycled)
    assert runner.stats.spawn_waits <= len(recycled)
    await runner.wait_for(lambda: len(runner.live_pids()) == 2)


# ---------------------------------------------------------------- 10. credits


async def test_never_more_jobs_than_processes(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("gated", concurrency=2)
    jobs = await master.submit_many([{"type": "w", "body": gate.body(tag=i)} for i in range(6)])
    running = [await gate.next(), await gate.next()]
    assert {a.pid for a in running} == set(runner.live_pids())
    stats = await type_stats(master)
    assert (stats["running"], stats["queued"], stats["slaves"]) == (2, 4, 2)
    finished = 0
    while running:
        await running.pop(0).release()
        finished += 1
        if finished <= 4:
            running.append(await gate.next())
            stats = await type_stats(master)
            assert stats["running"] == 2 and stats["queued"] == 4 - finished
    results = [await job.wait(10) for job in jobs]
    assert sorted(r["tag"] for r in results) == list(range(6))
    assert runner.stats.max_busy == 2
    # One credit per join plus one per answer: completed jobs + pool size.
    # (The master can see a result before the runner has read the daemon's ok.)
    await runner.wait_for(lambda: runner.stats.answers == 6)
    assert runner.stats.credits == 6 + 2


# ---------------------------------------------------------------- 4. handler not found


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("workerjobs.nosuchmodule:f", "HandlerNotFound", "no module named"),
        ("workerjobs.jobs:nosuchfunction", "HandlerNotFound", "has no attribute"),
        ("workerjobs.jobs:Counter.nosuchmethod", "HandlerNotFound", "has no method"),
        ("workerjobs.jobs:Counter", "HandlerNotFound", "is a class"),
        ("workerjobs.jobs", "HandlerNotFound", "must look like"),
        ("workerjobs.broken:f", "HandlerImportError", "importing"),
        ("workerjobs.needs_missing:f", "HandlerImportError", "importing"),
    ],
)
async def test_handler_that_does_not_resolve_is_a_startup_error(
    gloomd_server: Any, master: gloom.AsyncMaster, path: str, error: str, words: str
) -> None:
    from gloom.worker import serve

    from .workerjobs.support import worker_options

    with pytest.raises(gloom.worker.HandlerError) as info:
        with trio.fail_after(20):
            await serve("w", path, **worker_options(gloomd_server, concurrency=1))
    assert type(info.value).__name__ == error
    assert words in str(info.value)
    # Nothing ever joined, so no job could have been taken and lost.
    assert (await master.stats())["connections"]["slaves"] == 0


async def test_cli_exits_2_on_unknown_handler_and_3_without_daemon() -> None:
    import sys

    from .workerjobs.support import TESTS_DIR

    async def status(*args: str) -> tuple[int, bytes]:
        cmd = [
            sys.executable,
            "-m",
            "gloom.worker",
            "--type",
            "w",
            "--import-path",
            TESTS_DIR,
            *args,
        ]
        with trio.fail_after(30):
            done = await trio.run_process(cmd, capture_stderr=True, check=False)
        return done.returncode, done.stderr

    code, err = await status("--handler", "workerjobs.jobs:nosuchfunction", "--slave-port", "1")
    assert code == 2 and b"has no attribute 'nosuchfunction'" in err
    code, err = await status(
        "--handler", "workerjobs.jobs:echo", "--slave-port", "1", "--concurrency", "1"
    )
    assert code == 3 and b"cannot reach gloomd" in err
