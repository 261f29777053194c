"""`gloom worker --servers`: one pool serving several independent daemons.

Daemons run in the test's trio run (lost by cancelling their scope, restarted
on the same ports) or as processes (SIGKILLed); masters spread over them with
`gloom.open_masters`.  Jobs report to the gate; every wait is bounded.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

import gloom
from gloom.worker import Runner, serve
from gloomd.config import Config
from gloomd.server import GloomServer
from tests.support.daemon import spawn_gloomd

from .workerjobs.gate import Gate
from .workerjobs.support import TESTS_DIR, gone, wait_gone

pytestmark = pytest.mark.timeout(90)

HOST = "127.0.0.1"


class Daemon:
    """An in-process gloomd that can be lost and started again on its ports."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.master_port = 0
        self.slave_port = 0
        self.scope: trio.CancelScope | None = None

    async def start(self) -> None:
        server, self.scope = await self.nursery.start(
            _run_daemon, Config(master_port=self.master_port, slave_port=self.slave_port)
        )
        self.master_port, self.slave_port = server.master_port, server.slave_port

    def lose(self) -> None:
        assert self.scope is not None
        self.scope.cancel()


async def _run_daemon(
    config: Config, *, task_status: trio.TaskStatus[tuple[GloomServer, trio.CancelScope]]
) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(GloomServer(config).run)
        task_status.started((server, nursery.cancel_scope))


@pytest.fixture
async def runners(nursery: trio.Nursery) -> AsyncIterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:
        runner.stop(force=True)
    with trio.fail_after(15):
        for runner in started:
            await runner.wait_for(partial(_no_slots, runner))
        for runner in started:
            for pid in runner.pids_ever:
                await wait_gone(pid)
                assert gone(pid)


def _no_slots(runner: Runner) -> bool:
    return not runner.slots


async def start_worker(
    nursery: trio.Nursery, runners: list[Runner], servers: str, handler: str, **options: Any
) -> Runner:
    options.setdefault("concurrency", 1)
    options.setdefault("grace", 1.0)
    options.setdefault("reconnect_delay", 0.05)
    options.setdefault("max_reconnect_delay", 0.2)
    options.update(servers=servers, import_path=[TESTS_DIR])
    runner: Runner = await nursery.start(
        partial(serve, "w", f"workerjobs.jobs:{handler}", **options)
    )
    runners.append(runner)
    return runner


async def test_worker_takes_jobs_from_every_daemon_one_at_a_time(
    nursery: trio.Nursery, runners: list[Runner], gate: Gate
) -> None:
    daemons = [Daemon(nursery) for _ in range(2)]
    for daemon in daemons:
        await daemon.start()
    servers = ",".join(f"{HOST}:{d.slave_port}" for d in daemons)
    runner = await start_worker(nursery, runners, servers, "gated")
    masters = ",".join(f"{HOST}:{d.master_port}" for d in daemons)
    async with gloom.open_masters(masters) as spread:
        with trio.fail_after(30):
            first = await spread.submit("w", gate.body(tag=0))
            second = await spread.submit("w", gate.body(tag=1))
            assert spread.server_of(first.id) != spread.server_of(second.id)
            # One process: one job at a time, whichever daemon sent it; the
            # other daemon's job waits until the slot is free again.
            arrival = await gate.next()
            await arrival.release()
            arrival_two = await gate.next()
            assert {arrival.info["tag"], arrival_two.info["tag"]} == {0, 1}
            await arrival_two.release()
            results = [await first.wait(), await second.wait()]
            await runner.wait_for(lambda: runner.stats.answers == 2)
    assert [r["tag"] for r in results] == [0, 1]
    assert results[0]["pid"] == results[1]["pid"]
    assert runner.stats.max_busy == 1


async def test_worker_survives_a_lost_daemon_and_rejoins_it(
    nursery: trio.Nursery, runners: list[Runner]
) -> None:
    lost, live = Daemon(nursery), Daemon(nursery)
    await lost.start()
    await live.start()
    servers = f"{HOST}:{lost.slave_port},{HOST}:{live.slave_port}"
    runner = await start_worker(nursery, runners, servers, "echo", concurrency=2)
    lost.lose()
    with trio.fail_after(30):
        await runner.wait_for(lambda: runner.stats.reconnects >= 2)  # both slots noticed
        async with gloom.open_master(HOST, live.master_port) as master:
            assert await (await master.submit("w", "still served")).wait() == "still served"
        await lost.start()  # the same ports again
        assert lost.master_port and lost.slave_port
        async with gloom.open_master(HOST, lost.master_port) as master:
            jobs = [await master.submit("w", n) for n in range(4)]
            assert [await job.wait() for job in jobs] == list(range(4))


async def test_sigkilled_daemon_fails_its_jobs_and_the_rest_carry_on(
    nursery: trio.Nursery, runners: list[Runner], gate: Gate
) -> None:
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    with spawn_gloomd(env=quiet) as first, spawn_gloomd(env=quiet) as second:
        ports = (first.master_port, first.slave_port)
        servers = f"{HOST}:{first.slave_port},{HOST}:{second.slave_port}"
        runner = await start_worker(nursery, runners, servers, "gated", concurrency=2)
        masters = f"{HOST}:{first.master_port},{HOST}:{second.master_port}"
        async with gloom.open_masters(masters, retry_delay=0.05, max_retry_delay=0.1) as spread:
            with trio.fail_after(60):
                doomed = await spread.submit("w", gate.body(tag="doomed"))
                assert spread.server_of(doomed.id) == f"{HOST}:{first.master_port}"
                held = await gate.next()  # running on the first daemon
                first.stop(signal.SIGKILL)
                with pytest.raises(gloom.JobFailed) as crashed:
                    await doomed.wait()
                assert (crashed.value.category, crashed.value.reason) == ("CRASH", doomed.id)
                await runner.wait_for(lambda: runner.stats.abandoned == 1)
                del held
                # New submits fail over to the live daemon, where the worker serves on.
                jobs = [await spread.submit("w", gate.body(tag=n)) for n in range(3)]
                assert {spread.server_of(job.id) for job in jobs} == {
                    f"{HOST}:{second.master_port}"
                }
                for _ in jobs:
                    await (await gate.next()).release()
                assert [(await job.wait())["tag"] for job in jobs] == [0, 1, 2]
                # The daemon comes back on its ports: the worker joins it again.
                with spawn_gloomd(
                    "--master-port", str(ports[0]), "--slave-port", str(ports[1]), env=quiet
                ):
                    async with gloom.open_master(HOST, ports[0]) as master:
                        again = await master.submit("w", gate.body(tag="again"))
                        await (await gate.next()).release()
                        assert (await again.wait())["tag"] == "again"


async def test_a_busy_pool_over_two_daemons_leaves_none_parked(
    nursery: trio.Nursery, runners: list[Runner]
) -> None:
    # Both daemons keep offering: every job a slot takes parks its other
    # connection (taking back the offer it may have had) and joins it again
    # after answering.  A park that outlived its slot's job would leave that
    # daemon's jobs queued for good; here every job must complete.
    daemons = [Daemon(nursery) for _ in range(2)]
    for daemon in daemons:
        await daemon.start()
    servers = ",".join(f"{HOST}:{d.slave_port}" for d in daemons)
    runner = await start_worker(nursery, runners, servers, "echo", concurrency=2)
    masters = ",".join(f"{HOST}:{d.master_port}" for d in daemons)
    async with gloom.open_masters(masters) as spread:
        with trio.fail_after(30):
            jobs = await spread.submit_many([{"type": "w", "body": n} for n in range(200)])
            assert [await job.wait() for job in jobs] == list(range(200))
            await runner.wait_for(lambda: runner.stats.answers == 200)
    assert {spread.server_of(job.id) for job in jobs} == {
        f"{HOST}:{d.master_port}" for d in daemons
    }
    assert runner.stats.max_busy <= 2
