"""The job lifecycle's edges against the real daemon: client, `gloom`, worker, scheduler.

Issue 14's daemon side (delay, retries/backoff, unique, dead letters, kick,
delete, jobs, pause, resume) is the broker's; these tests drive it from the
edges built on the reference's wire contract (durability-and-operations.md,
section 2, and lifecycle.md): the Python client's methods, the `gloom`
subcommands, the worker runner's `Retry`, the scheduler's `unique` fires,
and the README's examples of all of them.  They need that daemon side: on a
branch without it they fail (an unknown key or action), by design.

The daemon is the in-process `GloomServer` on free loopback ports (the
README's examples, which run as a user runs them, get a `gloomd` process).
Nothing sleeps to wait for a state: waits are on frames, events, the
scheduler's status dumps, or (for what must *not* happen) on `stats`, which
the broker answers from the state every earlier frame already changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import gloom
from gloom.worker import Runner, serve
from gloomd.config import Config
from gloomd.local import LocalMaster
from gloomd.scheduler import JobScheduler
from gloomd.scheduler.config import MAX_SUBMIT_BACKOFF, MAX_SUBMIT_DELAY, MAX_SUBMIT_RETRIES
from gloomd.server import GloomServer
from tests.client.test_client_readme import BLOCK, PROMISE, promised_python_output
from tests.services.scheduler.schedjobs.store import Store
from tests.support.daemon import Daemon, spawn_gloomd
from tests.support.wire import Peer, join
from tests.worker.workerjobs.support import worker_options

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
GLOOM = str(Path(sys.executable).with_name("gloom"))
WAIT = 10  # seconds any one expected event may take on a busy machine


async def type_row(master: gloom.AsyncMaster, job_type: Any) -> dict[str, Any]:
    stats = await master.stats()
    rows = [row for row in stats["types"] if row["type"] == job_type]
    assert len(rows) == 1, stats
    return dict(rows[0])


# ---------------------------------------------------------------- the client: retries


async def test_retries_over_a_real_slave_that_fails_k_times_then_succeeds(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    attempts: list[int] = []

    async def slave() -> None:
        async with gloom.open_slave("127.0.0.1", gloomd_server.slave_port) as s:
            await s.join("flaky")
            async for job in s.jobs():
                attempts.append(job.attempt)
                if job.attempt <= 3:
                    await job.fail("ERROR", {"type": "Busy", "message": str(job.attempt)})
                else:
                    await job.respond({"done_at": job.attempt})

    nursery.start_soon(slave)
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        job = await master.submit("flaky", 1, retries=3, backoff=0.01)
        with trio.fail_after(WAIT):
            assert await job.wait() == {"done_at": 4}
        assert attempts == [1, 2, 3, 4]
        assert job.attempt is None  # a result carries no count
        totals = (await master.stats())["totals"]
        assert totals["retried"] == 3


async def test_exhausted_retries_report_the_attempt(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    async def slave() -> None:
        async with gloom.open_slave("127.0.0.1", gloomd_server.slave_port) as s:
            await s.join("doomed")
            async for job in s.jobs():
                await job.fail("ERROR", {"type": "Nope", "message": f"no {job.attempt}"})

    nursery.start_soon(slave)
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        job = await master.submit("doomed", 1, retries=2, backoff=0.01)
        with trio.fail_after(WAIT), pytest.raises(gloom.JobError) as failed:
            await job.wait()
    assert (failed.value.category, failed.value.attempt, job.attempt) == ("ERROR", 3, 3)
    assert failed.value.reason == {"type": "Nope", "message": "no 3"}


# ---------------------------------------------------------------- the client: unique


async def test_two_masters_attached_to_one_job_both_get_progress_and_result(
    gloomd_server: GloomServer,
) -> None:
    slave = await join(gloomd_server.slave_port, "shared")
    async with (
        gloom.open_master("127.0.0.1", gloomd_server.master_port) as first,
        gloom.open_master("127.0.0.1", gloomd_server.master_port) as second,
    ):
        mine = await first.submit("shared", 1, id="u-1", unique=True)
        theirs = await second.submit("shared", 1, id="u-1", unique=True)
        assert (mine.attached, theirs.attached) == (False, True)
        mine_progress, their_progress = mine.progress_updates(), theirs.progress_updates()
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "u-1"
            await slave.send({"action": "progress", "body": 50})
            assert await anext(mine_progress) == 50
            assert await anext(their_progress) == 50
            assert await slave.request({"action": "respond", "body": "both"}) == {"ok": True}
            assert (await mine.wait(), await theirs.wait()) == ("both", "both")


async def test_the_job_survives_the_first_master_leaving(gloomd_server: GloomServer) -> None:
    slave = await join(gloomd_server.slave_port, "kept")
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as second:
        async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as first:
            await first.submit("kept", 1, id="k-1", unique=True)
            theirs = await second.submit("kept", 1, id="k-1", unique=True)
            assert theirs.attached
        # `first` has gone; the job has a master left, so it stays.
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "k-1"
            await slave.send({"action": "progress", "body": "half"})
            assert await anext(theirs.progress_updates()) == "half"
            assert await slave.request({"action": "respond", "body": "R"}) == {"ok": True}
            assert await theirs.wait() == "R"


async def test_unique_with_another_type_is_id_exists(gloomd_server: GloomServer) -> None:
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        await master.submit("one-type", 1, id="same", detach=True)
        with pytest.raises(gloom.ServerError) as refused:
            await master.submit("other-type", 1, id="same", unique=True)
        assert (refused.value.error, refused.value.reason) == ("id_exists", "same")
        assert await master.delete("same") is True


async def test_blocking_master_reports_attached(gloomd_server: GloomServer) -> None:
    port = gloomd_server.master_port

    def use() -> tuple[bool, bool]:
        with gloom.Master(("127.0.0.1", port), timeout=WAIT) as master:
            master.submit("b-1", "nobody", 1, delay=3600, detach=True, unique=True)
            fresh = master.last_attached
            with gloom.Master(("127.0.0.1", port), timeout=WAIT) as other:
                other.submit("b-1", "nobody", 1, unique=True)
                joined = other.last_attached
            master.delete("b-1")
        return fresh, joined

    with trio.fail_after(WAIT):
        assert await trio.to_thread.run_sync(use) == (False, True)


# ---------------------------------------------------------------- the client: dead letters


async def test_dead_letters_result_kick_and_delete(gloomd_server: GloomServer) -> None:
    slave = await join(gloomd_server.slave_port, "letters")
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        job = await master.submit("letters", {"n": 1}, id="dl-1", detach=True, priority=4)
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "dl-1"
            fail = {"action": "fail", "error": "ERROR", "reason": {"message": "bad"}}
            assert await slave.request(fail) == {"ok": True}
            with pytest.raises(gloom.JobError):
                await job.wait()
        # Dead: listed, its failure kept for `result`, its id still taken.
        (info,) = [i async for i in master.jobs("letters")]
        assert (info.id, info.state, info.attempt, info.detach, info.priority) == (
            "dl-1", gloom.ListedState.DEAD, 1, True, 4,
        )  # fmt: skip
        assert info.age_s >= 0
        with pytest.raises(gloom.JobError) as kept:
            await master.result("dl-1")
        # Submitted without `retries`: its failure is protocol.md's frame, no attempt key
        # (a client that uses no lifecycle key sees exactly protocol.md).
        assert kept.value.reason == {"message": "bad"} and kept.value.attempt is None
        row = await type_row(master, "letters")
        assert row["dead"] == 1

        # Kicked: queued again, delivered with the attempt count kept.
        assert await master.kick("dl-1") is True
        with trio.fail_after(WAIT):
            again = await slave.recv()
        assert (again["id"], again["attempt"]) == ("dl-1", 2)
        (info,) = [i async for i in master.jobs("letters")]
        assert info.state is gloom.ListedState.RUNNING
        with pytest.raises(gloom.InvalidState) as running:
            await master.delete("dl-1")
        assert (running.value.state, running.value.id) == ("running", "dl-1")
        with pytest.raises(gloom.InvalidState) as not_dead:
            await master.kick("dl-1")
        assert not_dead.value.state == "running"

        # Dead again, then deleted: gone.
        assert await slave.request(fail) == {"ok": True}
        dead = [i.id async for i in master.jobs(state="dead")]
        assert dead == ["dl-1"]
        # Kicked once, its failures count deliveries: the second one says so.
        with pytest.raises(gloom.JobError) as again_dead:
            await master.result("dl-1")
        assert again_dead.value.attempt == 2
        assert await master.delete("dl-1") is True
        with pytest.raises(gloom.UnknownJob) as gone:
            await master.kick("dl-1")
        assert gone.value.id == "dl-1"
        assert [i async for i in master.jobs("letters")] == []


async def test_kick_by_type_kicks_the_oldest_dead_first(gloomd_server: GloomServer) -> None:
    slave = await join(gloomd_server.slave_port, "bulk-dead")
    fail = {"action": "fail", "error": "ERROR", "reason": None}
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        for n in range(5):
            await master.submit("bulk-dead", n, id=f"bd-{n}", detach=True)
        with trio.fail_after(WAIT):
            for n in range(5):
                assert (await slave.recv())["id"] == f"bd-{n}"
                assert await slave.request(fail) == {"ok": True}
        await master.pause("bulk-dead")  # kicked jobs stay queued where the listing sees them
        assert await master.kick_type("bulk-dead", limit=2) == 2
        queued = [i.id async for i in master.jobs("bulk-dead", state="queued")]
        assert queued == ["bd-0", "bd-1"]
        assert await master.kick_type("bulk-dead") == 3
        assert await master.kick_type("bulk-dead") == 0
        assert len([i async for i in master.jobs("bulk-dead", state="queued")]) == 5
        for n in range(5):
            await master.delete(f"bd-{n}")
    await slave.aclose()


# ---------------------------------------------------------------- the client: jobs, pause


async def test_jobs_pages_through_queued_jobs_in_dispatch_order(gloomd_server: GloomServer) -> None:
    count = 2500
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        specs = [
            {"type": "pages", "body": n, "id": f"p{n}", "priority": n % 5} for n in range(count)
        ]
        await master.submit_many(specs)
        expected = [f"p{n}" for n in sorted(range(count), key=lambda n: (-(n % 5), n))]
        listed = [info async for info in master.jobs("pages")]
        assert [info.id for info in listed] == expected
        assert {info.state for info in listed} == {gloom.ListedState.QUEUED}
        small = [info.id async for info in master.jobs("pages", limit=250, page_size=100)]
        assert small == expected[:250]
        with pytest.raises(gloom.ServerError) as too_many:
            await master.jobs_page("pages", limit=1001)
        assert (too_many.value.error, too_many.value.reason) == ("invalid_type", "limit")

        port = gloomd_server.master_port

        def blocking() -> list[Any]:
            with gloom.Master(("127.0.0.1", port), timeout=WAIT) as other:
                return [info.id for info in other.jobs("pages", state="queued")]

        with trio.fail_after(WAIT):
            assert await trio.to_thread.run_sync(blocking) == expected


async def test_pause_keeps_jobs_queued_and_resume_hands_them_out(
    gloomd_server: GloomServer,
) -> None:
    slave = await join(gloomd_server.slave_port, "held")
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        assert await master.pause("held") is None
        job = await master.submit("held", "x")
        row = await type_row(master, "held")
        # The submit was judged before stats: had the type not been paused, the
        # idle slave would be running the job now.
        assert (row["paused"], row["queued"], row["running"], row["idle"]) == (True, 1, 0, 1)
        await master.resume("held")
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == job.id
            assert await slave.request({"action": "respond", "body": "y"}) == {"ok": True}
            assert await job.wait() == "y"
        assert (await type_row(master, "held"))["paused"] is False


async def test_a_delayed_job_is_listed_as_delayed_and_can_be_deleted(
    gloomd_server: GloomServer,
) -> None:
    slave = await join(gloomd_server.slave_port, "later")  # gives the type a stats row
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        job = await master.submit("later", 1, id="d-1", delay=3600)
        (info,) = [i async for i in master.jobs("later")]
        assert (info.id, info.state) == ("d-1", gloom.ListedState.DELAYED)
        row = await type_row(master, "later")
        assert (row["delayed"], row["queued"], row["idle"]) == (1, 0, 1)  # not handed out
        assert await master.delete("d-1") is True
        assert job.state == "cancelled"
    await slave.aclose()


# ---------------------------------------------------------------- the gloom command


async def gloom_cli(port: int, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    with trio.fail_after(30):
        done = await trio.run_process(
            [GLOOM, *args, "--master-port", str(port)],
            capture_stdout=True, capture_stderr=True, check=False, env=env,
        )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_cli_jobs_dead_kick_delete(gloomd_server: GloomServer) -> None:
    port = gloomd_server.master_port
    slave = await join(gloomd_server.slave_port, "cli-t")
    status, out, _ = await gloom_cli(port, "submit", "cli-t", "1", "--detach", "--id", "c-1")
    assert (status, out) == (0, "c-1\n")
    with trio.fail_after(WAIT):
        assert (await slave.recv())["id"] == "c-1"
        fail = {"action": "fail", "error": "ERROR", "reason": "broken"}
        assert await slave.request(fail) == {"ok": True}

    status, out, _ = await gloom_cli(port, "dead", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [(r["id"], r["state"], r["attempt"]) for r in rows] == [
        ("c-1", "dead", 1)
    ]
    status, out, _ = await gloom_cli(port, "jobs", "--type", "cli-t")
    assert status == 0 and "c-1" in out and "dead" in out

    assert await gloom_cli(port, "kick", "c-1") == (0, "kicked c-1\n", "")
    with trio.fail_after(WAIT):
        again = await slave.recv()
    assert (again["id"], again["attempt"]) == ("c-1", 2)
    assert await gloom_cli(port, "delete", "c-1") == (
        1, "", "gloom: job c-1 is running: a running job cannot be deleted\n",
    )  # fmt: skip
    assert await gloom_cli(port, "kick", "c-1") == (
        1, "", "gloom: job c-1 is running: only dead jobs are kicked\n",
    )  # fmt: skip
    assert await slave.request(fail) == {"ok": True}
    assert await gloom_cli(port, "kick", "--type", "cli-t", "--limit", "5") == (
        0, "kicked 1 dead job of type cli-t\n", "",
    )  # fmt: skip
    with trio.fail_after(WAIT):
        assert (await slave.recv())["attempt"] == 3
    assert await slave.request(fail) == {"ok": True}
    assert await gloom_cli(port, "delete", "c-1") == (0, "deleted c-1\n", "")
    assert await gloom_cli(port, "delete", "c-1") == (1, "", "gloom: gloomd holds no job c-1\n")
    assert await gloom_cli(port, "dead", "--type", "cli-t") == (
        0, "no dead jobs of type cli-t\n", "",
    )  # fmt: skip


async def test_cli_pause_resume_and_listing_limits(gloomd_server: GloomServer) -> None:
    port = gloomd_server.master_port
    slave = await join(gloomd_server.slave_port, "cli-p")
    assert await gloom_cli(port, "pause", "cli-p") == (0, "paused cli-p\n", "")
    for n in range(3):
        status, _, _ = await gloom_cli(
            port, "submit", "cli-p", str(n), "--detach", "--id", f"cp{n}"
        )
        assert status == 0
    status, out, err = await gloom_cli(port, "jobs", "--type", "cli-p", "--limit", "2", "--json")
    assert status == 0 and [json.loads(x)["id"] for x in out.splitlines()] == ["cp0", "cp1"]
    assert err == "gloom: more than 2 jobs; --limit N shows more\n"
    status, out, _ = await gloom_cli(port, "stats", "--json")
    (row,) = [r for r in json.loads(out)["types"] if r["type"] == "cli-p"]
    assert (row["paused"], row["queued"], row["idle"]) == (True, 3, 1)
    assert await gloom_cli(port, "resume", "cli-p") == (0, "resumed cli-p\n", "")
    with trio.fail_after(WAIT):
        assert (await slave.recv())["id"] == "cp0"
    await slave.aclose()


async def test_cli_submit_lifecycle_flags(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    port = gloomd_server.master_port
    slave = await join(gloomd_server.slave_port, "cli-r")

    async def fail_once() -> None:
        first = await slave.recv()
        assert first.get("attempt", 1) == 1
        await slave.request({"action": "fail", "error": "ERROR", "reason": "once"})
        second = await slave.recv()
        assert second["attempt"] == 2
        await slave.request({"action": "respond", "body": {"attempt": 2}})

    nursery.start_soon(fail_once)
    retried = await gloom_cli(
        port, "submit", "cli-r", "1", "-q", "--retries", "2", "--backoff", "0.01"
    )
    assert retried[:2] == (0, '{"attempt":2}\n')

    delayed = ["submit", "cli-d", "1", "--detach", "--id", "cd-1", "--delay", "3600"]
    assert (await gloom_cli(port, *delayed))[:2] == (0, "cd-1\n")
    assert (await gloom_cli(port, *delayed))[0] == 1  # id_exists without --unique
    assert (await gloom_cli(port, *delayed, "--unique"))[:2] == (0, "cd-1\n")
    status, out, _ = await gloom_cli(port, "jobs", "--state", "delayed", "--json")
    assert status == 0 and [json.loads(x)["id"] for x in out.splitlines()] == ["cd-1"]
    bad = await gloom_cli(port, "submit", "cli-d", "1", "--detach", "--retries", "1001")
    assert bad[0] == 1 and "retries" in bad[2]  # gloomd's invalid_type / "retries"
    assert (await gloom_cli(port, "delete", "cd-1"))[0] == 0


# ---------------------------------------------------------------- the worker runner


async def start_runner(
    nursery: trio.Nursery, server: GloomServer, handler: str, **options: Any
) -> Runner:
    runner: Runner = await nursery.start(
        partial(serve, "w", f"workerjobs.jobs:{handler}", **worker_options(server, **options))
    )
    return runner


async def test_worker_handler_raising_retry_k_times_then_succeeding(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    runner = await start_runner(nursery, gloomd_server, "retry_until", concurrency=1)
    try:
        async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
            job = await master.submit("w", {"succeed_at": 4}, retries=5, backoff=0.01)
            with trio.fail_after(WAIT * 2):
                assert await job.wait() == {"attempt": 4, "id": job.id}
        assert (runner.stats.retries, runner.stats.errors, runner.stats.succeeded) == (3, 0, 1)
        started = [e.detail["attempt"] for e in runner.events if e.kind == "job_started"]
        assert started == [1, 2, 3, 4]
    finally:
        runner.stop()


async def test_worker_retry_without_budget_fails_with_the_retry_reason(
    gloomd_server: GloomServer, nursery: trio.Nursery
) -> None:
    runner = await start_runner(nursery, gloomd_server, "retry_until", concurrency=1)
    try:
        async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
            job = await master.submit("w", {"succeed_at": 9}, retries=1, backoff=0.01)
            with trio.fail_after(WAIT * 2), pytest.raises(gloom.JobError) as failed:
                await job.wait()
        assert failed.value.category == "ERROR" and failed.value.attempt == 2
        assert failed.value.reason == {
            "type": "Retry", "message": "attempt 2 is too early", "traceback": "",
        }  # fmt: skip
        assert failed.value.traceback == ""
    finally:
        runner.stop()


async def test_worker_burst_waits_for_a_retry_in_its_back_off(gloomd_server: GloomServer) -> None:
    async with gloom.open_master("127.0.0.1", gloomd_server.master_port) as master:
        job = await master.submit("w", {"succeed_at": 2}, retries=1, backoff=0.3)
        options = worker_options(gloomd_server, concurrency=1, burst=True)
        with trio.fail_after(WAIT * 3):
            stats = await serve("w", "workerjobs.jobs:retry_until", **options)
            assert await job.wait() == {"attempt": 2, "id": job.id}
    assert (stats.retries, stats.succeeded) == (1, 1)


# ---------------------------------------------------------------- the scheduler


async def test_an_overlapping_unique_fire_attaches_instead_of_running_twice(
    nursery: trio.Nursery, wire_peers: None
) -> None:
    server: GloomServer = await nursery.start(GloomServer(Config(master_port=0, slave_port=0)).run)
    busy = await join(server.slave_port, "report")
    spare = await join(server.slave_port, "report")  # a second run would land here
    store = Store()
    conf = {"submit": {"type": "report", "body": 1, "unique": True},
            "every": [0.2, "second"], "concurrence_n": 2}  # fmt: skip
    scheduler = JobScheduler({"rep": conf}, store.dump, submit=LocalMaster(server, "sched").call)
    await nursery.start(scheduler.run)
    with trio.fail_after(WAIT):
        held = await busy.recv()
        assert held["id"] == "sched:rep"
        await store.wait_until(lambda s: any(" attached to job sched:rep" in line
                                             for line in s["rep"].get("log", [])))  # fmt: skip
    master = await Peer.connect(server.master_port)
    (row,) = (await master.request({"action": "stats", "type": "report"}))["stats"]["types"]
    assert (row["running"], row["queued"], row["idle"]) == (1, 0, 1)  # one job for two fires
    assert len(store.last["rep"]["active_threads"]) == 2

    assert await busy.request({"action": "respond", "body": {"rows": 7}}) == {"ok": True}
    with trio.fail_after(WAIT):
        st = await store.wait_until(
            lambda s: sum(" finished at: " in line for line in s["rep"]["log"]) >= 2
        )
    assert st["rep"]["message"] == 'result: {"rows":7}'
    await spare.aclose()
    await busy.aclose()
    await master.aclose()


async def test_the_schedulers_ranges_are_the_daemons(gloomd_server: GloomServer) -> None:
    master = await Peer.connect(gloomd_server.master_port)
    edges = [
        ("delay", MAX_SUBMIT_DELAY, MAX_SUBMIT_DELAY + 1),
        ("delay", 0, -0.5),
        ("retries", MAX_SUBMIT_RETRIES, MAX_SUBMIT_RETRIES + 1),
        ("retries", 0, -1),
        ("backoff", MAX_SUBMIT_BACKOFF, MAX_SUBMIT_BACKOFF + 0.5),
        ("backoff", 0.001, 0),
    ]
    for n, (key, inside, outside) in enumerate(edges):
        ok = {"action": "submit", "id": f"in-{n}", "type": "nobody", "body": 1, key: inside}
        assert await master.request(ok) == {"ok": True, "id": f"in-{n}"}, key
        bad = {"action": "submit", "id": f"out-{n}", "type": "nobody", "body": 1, key: outside}
        assert await master.request(bad) == {"error": "invalid_type", "reason": key}, key
    await master.aclose()


# ---------------------------------------------------------------- README examples


def readme_section(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert start in text and end in text, f"README lacks {start}"
    return text.split(start, 1)[1].split(end, 1)[0]


LIFECYCLE = ("<!-- lifecycle-examples:start -->", "<!-- lifecycle-examples:end -->")


def blocks(section: str, language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(section) if lang == language]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with spawn_gloomd(env={"GLOOMD_TEST_QUIET_LOGS": "1"}) as d:
        yield d


def run_python(daemon: Daemon, code: str, cwd: Path | None = None) -> None:
    expected = promised_python_output(code)
    assert expected, "an example that promises no output checks nothing"
    code = code.replace("9998", str(daemon.master_port)).replace("9999", str(daemon.slave_port))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected


def test_the_lifecycle_section_has_its_examples() -> None:
    section = readme_section(*LIFECYCLE)
    assert len(blocks(section, "python")) == 3 and len(blocks(section, "sh")) == 1


@pytest.mark.parametrize("index", range(3))
def test_lifecycle_python_example(daemon: Daemon, index: int) -> None:
    run_python(daemon, blocks(readme_section(*LIFECYCLE), "python")[index])


def test_lifecycle_shell_example(daemon: Daemon, tmp_path: Path) -> None:
    (code,) = blocks(readme_section(*LIFECYCLE), "sh")
    expected = [m.group(1) for line in code.splitlines() if (m := PROMISE.search(line))]
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "GLOOM_MASTER_PORT": str(daemon.master_port),
        "GLOOM_SLAVE_PORT": str(daemon.slave_port),
        "NO_COLOR": "1",
    }
    # Its own process group, killed whatever happens: a script that stops
    # half way (bash -e) must not leave its background `gloom slave` behind.
    # Output goes to files, so the wait ends when bash does, not the slave.
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", code], stdout=stdout, stderr=stderr, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    position = 0
    for want in expected:
        assert want in lines[position:], f"{want!r} not printed (stdout: {done.stdout!r})"
        position = lines.index(want, position) + 1
    assert re.search(r"mail-2 .*queued", done.stdout) and re.search(
        r"mail-1 .*delayed", done.stdout
    )
