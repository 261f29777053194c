"""Job dependencies (`after`) end to end, with jobs run by a real worker runner.

Behaviour 12 of the reference's list, plus the daemon's rules for `after`:
unknown ids and self-reference are refused at submit, a dependency that
finished within the last hour is remembered (ok or failed), and a failed
dependency (error, daemon failure, cancel) fails its dependents with
category DEPENDENCY without running them.
"""

from __future__ import annotations

import pytest
import trio

import gloom
from gloom import JobError, JobFailed, ServerError

from .workerjobs.gate import Gate
from .workerjobs.support import StartWorker, type_stats

pytestmark = pytest.mark.timeout(60)


async def test_dependent_waits_for_its_dependency(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("gated", concurrency=2)
    first = await master.submit("w", gate.body(tag="A"), id="A")
    second = await master.submit("w", gate.body(tag="B"), id="B", after=["A"])
    a = await gate.next()
    assert a.info["id"] == "A"
    # B is held by the daemon, not queued: the idle process gets nothing.
    stats = await master.stats()
    assert stats["waiting"] == 1
    entry = await type_stats(master)
    assert (entry["queued"], entry["running"], entry["idle"]) == (0, 1, 1)
    await a.release()
    assert (await first.wait(10))["tag"] == "A"
    b = await gate.next()
    assert b.info["id"] == "B"
    await b.release()
    assert (await second.wait(10))["tag"] == "B"
    assert runner.stats.jobs_started == 2


async def test_failed_dependency_fails_the_chain_without_running_it(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    runner = await start_worker("gated", concurrency=2)
    a = await master.submit("w", gate.body(fail=True), id="A")
    b = await master.submit("w", gate.body(), id="B", after=["A"])
    c = await master.submit("w", gate.body(), id="C", after=["B"])
    ok = await master.submit("w", gate.body(tag="ok"), id="OK")
    arrivals = [await gate.next(), await gate.next()]
    assert sorted(x.info["id"] for x in arrivals) == ["A", "OK"]
    for arrival in arrivals:
        await arrival.release()
    with pytest.raises(JobError) as a_error:
        await a.wait(10)
    assert a_error.value.category == "ERROR"
    for job in (b, c):
        with pytest.raises(JobFailed) as info:
            await job.wait(10)
        assert type(info.value) is JobFailed  # the daemon's verdict, not a slave's
        assert info.value.category == "DEPENDENCY" and info.value.id == job.id
    assert (await ok.wait(10))["tag"] == "ok"
    assert runner.stats.jobs_started == 2  # B and C never reached a process


async def test_timed_out_dependency_fails_its_dependent(
    start_worker: StartWorker, master: gloom.AsyncMaster, gate: Gate
) -> None:
    await start_worker("sleeper", concurrency=1, timeout=0.3, grace=0.5)
    a = await master.submit("w", gate.body(), id="slow")
    b = await master.submit("w", gate.body(), id="next", after=["slow"])
    await gate.next()
    with pytest.raises(JobError) as info:
        await a.wait(10)
    assert info.value.category == "TIMEOUT"
    with pytest.raises(JobFailed) as dep:
        await b.wait(10)
    assert dep.value.category == "DEPENDENCY"


async def test_finished_dependencies_are_remembered(
    start_worker: StartWorker, master: gloom.AsyncMaster
) -> None:
    await start_worker("echo", type="e", concurrency=1)
    await start_worker("boom", type="b", concurrency=1)
    assert await (await master.submit("e", 1, id="done-ok")).wait(10) == 1
    with pytest.raises(JobError):
        await (await master.submit("b", 1, id="done-bad")).wait(10)
    # Both ids are free again, yet `after` still knows how they ended.
    assert await (await master.submit("e", 2, id="after-ok", after=["done-ok"])).wait(10) == 2
    late = await master.submit("e", 3, id="after-bad", after=["done-ok", "done-bad"])
    with pytest.raises(JobFailed) as info:
        await late.wait(10)
    assert info.value.category == "DEPENDENCY"


async def test_cancelled_dependency_fails_its_dependent(master: gloom.AsyncMaster) -> None:
    # No worker for this type: the dependency stays queued until cancelled.
    a = await master.submit("nobody", 1, id="queued")
    b = await master.submit("nobody", 2, id="waits", after=["queued"])
    assert await master.cancel("queued") is True
    with pytest.raises(JobFailed) as info:
        with trio.fail_after(10):
            await b.wait()
    assert info.value.category == "DEPENDENCY"
    assert a.state is gloom.JobState.CANCELLED


async def test_unknown_and_self_dependencies_are_refused(master: gloom.AsyncMaster) -> None:
    with pytest.raises(ServerError) as unknown:
        await master.submit("w", 1, id="x", after=["never-submitted"])
    assert (unknown.value.error, unknown.value.reason) == ("unknown_dependency", "never-submitted")
    with pytest.raises(ServerError) as cycle:
        await master.submit("w", 1, id="self", after=["self"])
    assert (cycle.value.error, cycle.value.reason) == ("dependency_cycle", "self")
    # Ids are compared exactly: 1 is not "1".
    await master.submit("nobody", 1, id=1)
    with pytest.raises(ServerError) as typed:
        await master.submit("nobody", 1, id="y", after=["1"])
    assert typed.value.error == "unknown_dependency"
