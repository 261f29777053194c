"""Submit-type scheduled jobs against a real gloomd, seen by a raw slave socket.

The daemon is the in-process `GloomServer` on 127.0.0.1 port 0, and the
scheduler submits to it as the daemon's own scheduler does: through a
`gloomd.local.LocalMaster`, in-process.  The slave is hand-built frames
(`tests.wire`), so it checks what actually crosses the wire.  These tests use
the real clock (sockets and MockClock's autojump do not mix: the clock would
jump while a frame is in flight) and wait on events under `fail_after`, never
on sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from gloomd.config import Config
from gloomd.local import LocalMaster, LocalMasterError, RemoteJobError, SubmitRejected
from gloomd.scheduler import JobScheduler
from gloomd.server import GloomServer
from tests.support import wire

from .schedjobs.store import Store

pytestmark = pytest.mark.timeout(30)

WAIT = 10  # seconds any single expected event may take on a busy machine


def new_server(**settings: Any) -> GloomServer:
    return GloomServer(Config(host="127.0.0.1", master_port=0, slave_port=0, **settings))


async def start_server(nursery: trio.Nursery, server: GloomServer | None = None) -> GloomServer:
    server = server or new_server()
    await nursery.start(server.run)
    return server


def submit_job(**submit: Any) -> dict[str, Any]:
    return {"submit": {"type": "report", **submit}, "every": [1, "day"]}


async def start_scheduler(
    nursery: trio.Nursery, jobs: dict[str, Any], server: GloomServer, store: Store
) -> JobScheduler:
    sched = JobScheduler(jobs, store.dump, submit=LocalMaster(server, "scheduler").call)
    await nursery.start(sched.run)
    return sched


async def test_submit_job_reaches_a_slave_and_its_result_is_recorded(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    slave = await wire.join(server.slave_port, "report")
    store = Store()
    job_conf = submit_job(body={"kind": "hourly"}, priority=5, timeout=60)
    await start_scheduler(nursery, {"nightly": job_conf}, server, store)
    with trio.fail_after(WAIT):
        job = await slave.recv()
    assert (job["action"], job["type"], job["body"], job["timeout"]) == (
        "job",
        "report",
        {"kind": "hourly"},
        60,
    )
    assert job["id"].startswith("sched:nightly:")
    assert job["id"] in store.last["nightly"]["active_threads"]

    assert await slave.request({"action": "respond", "body": {"rows": 5}}) == {"ok": True}
    with trio.fail_after(WAIT):
        st = await store.wait_until(lambda s: not s["nightly"]["active_threads"])
    assert st["nightly"]["message"] == 'result: {"rows":5}'
    assert any(line.startswith(f"run {job['id']} finished") for line in st["nightly"]["log"])
    await slave.aclose()


async def test_unanswered_submits_count_against_concurrence_n(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    slave = await wire.join(server.slave_port, "report")
    store = Store()
    conf = {"submit": {"type": "report", "body": 1}, "every": [0.05, "second"], "concurrence_n": 1}
    await start_scheduler(nursery, {"often": conf}, server, store)
    with trio.fail_after(WAIT):
        first = await slave.recv()
        await store.wait_until(lambda s: "skipped" in s["often"]["message"])
    master = await wire.Peer.connect(server.master_port)
    stats = await master.request({"action": "stats"})
    assert stats["stats"]["totals"]["submitted"] == 1  # the skipped fires never reached gloomd

    assert await slave.request({"action": "respond", "body": "ok"}) == {"ok": True}
    with trio.fail_after(WAIT):
        second = await slave.recv()
    assert second["id"] != first["id"] and second["id"].startswith("sched:often:")
    await slave.aclose()
    await master.aclose()


async def test_daemon_not_running_is_recorded_then_reached(nursery: trio.Nursery) -> None:
    server = new_server()
    store = Store()
    conf = {"submit": {"type": "report"}, "every": [0.1, "second"]}
    await start_scheduler(nursery, {"j": conf}, server, store)
    with trio.fail_after(WAIT):
        st = await store.wait_until(lambda s: s["j"]["message"].startswith("failed"))
    assert st["j"]["message"] == "failed: LocalMasterError: gloomd is not running"
    assert st["j"]["active_threads"] == {}

    # The daemon comes up: the next fire takes a seat and gets through.
    await start_server(nursery, server)
    slave = await wire.join(server.slave_port, "report")
    with trio.fail_after(WAIT):
        job = await slave.recv()
        assert await slave.request({"action": "respond", "body": [1, 2]}) == {"ok": True}
        await store.wait_until(lambda s: s["j"]["message"] == "result: [1,2]")
    assert job["id"].startswith("sched:j:")
    await slave.aclose()


async def test_slave_failure_and_timeout_are_recorded(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    failing_slave = await wire.join(server.slave_port, "fails")
    silent_slave = await wire.join(server.slave_port, "slow")
    store = Store()
    jobs = {
        "failing": {"submit": {"type": "fails"}, "every": [1, "day"]},
        "slow": {"submit": {"type": "slow", "timeout": 0.2}, "every": [1, "day"]},
    }
    await start_scheduler(nursery, jobs, server, store)
    with trio.fail_after(WAIT):
        await failing_slave.recv()
        ack = await failing_slave.request(
            {"action": "fail", "error": "ERROR", "reason": "disk full"}
        )
        assert ack == {"ok": True}
        slow = await silent_slave.recv()  # and never answered: gloomd times it out
        st = await store.wait_until(
            lambda s: (
                s["failing"]["message"].startswith("failed")
                and s["slow"]["message"].startswith("failed")
            )
        )
    assert st["failing"]["message"] == "failed: RemoteJobError: job_error (ERROR): 'disk full'"
    assert st["slow"]["message"] == f"failed: RemoteJobError: job_failed (TIMEOUT): {slow['id']!r}"
    await failing_slave.aclose()
    await silent_slave.aclose()


async def test_daemon_shutdown_and_lost_connection_fail_the_waiting_runs(
    nursery: trio.Nursery,
) -> None:
    store = Store()
    async with trio.open_nursery() as daemon:
        server = await start_server(daemon)
        slave = await wire.join(server.slave_port, "report")
        await start_scheduler(nursery, {"j": submit_job()}, server, store)
        with trio.fail_after(WAIT):
            await slave.recv()
            await server.shutdown()  # gloomd fails unanswered jobs with HALTED
            st = await store.wait_until(lambda s: not s["j"]["active_threads"])
        assert (
            st["j"]["message"]
            == f"failed: RemoteJobError: job_failed (HALTED): {st['j']['log'][0].split()[1]!r}"
        )
        await slave.aclose()

    async with trio.open_nursery() as daemon:
        server = await start_server(daemon)
        slave = await wire.join(server.slave_port, "report")
        store2 = Store()
        await start_scheduler(nursery, {"k": submit_job()}, server, store2)
        with trio.fail_after(WAIT):
            await slave.recv()
            daemon.cancel_scope.cancel()  # abrupt: no HALTED frame, the server just stops
    with trio.fail_after(WAIT):
        st = await store2.wait_until(lambda s: not s["k"]["active_threads"])
    assert st["k"]["message"] == "failed: LocalMasterError: gloomd stopped before it answered"
    await slave.aclose()


async def test_local_master_matches_results_by_id_and_reports_rejections(
    nursery: trio.Nursery,
) -> None:
    server = await start_server(nursery)
    link = LocalMaster(server, "scheduler")
    slave = await wire.join(server.slave_port, "t")
    results: dict[str, Any] = {}

    async def call(job_id: str) -> None:
        try:
            results[job_id] = await link.call(job_id, "t", {"n": job_id})
        except RemoteJobError as exc:
            results[job_id] = exc.frame

    async with trio.open_nursery() as calls:
        calls.start_soon(call, "one")
        with trio.fail_after(WAIT):
            first = await slave.recv()
            assert first["id"] == "one"
            calls.start_soon(call, "two")
            # The same id again while "one" is running: refused, from another
            # master by gloomd, from this one before it reaches the broker.
            other = LocalMaster(server, "other")
            with pytest.raises(SubmitRejected, match="id_exists"):
                await other.call("one", "t", None)
            other.close()
            with pytest.raises(SubmitRejected, match="id_exists"):
                await link.call("one", "t", None)
            with pytest.raises(SubmitRejected, match=r"invalid_type.*priority"):
                await link.call("three", "t", None, priority="high")  # type: ignore[arg-type]
            assert await slave.request({"action": "respond", "body": "r1"}) == {"ok": True}
            second = await slave.recv()
            assert second["id"] == "two"
            await slave.send({"action": "fail", "error": "CRASH", "reason": None})
            assert await slave.recv() == {"ok": True}
    assert results == {
        "one": "r1",
        "two": {"error": "job_error", "reason": None, "id": "two", "category": "CRASH"},
    }


async def test_local_master_call_raises_the_remote_error(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    link = LocalMaster(server, "scheduler")
    slave = await wire.join(server.slave_port, "t")
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await link.call(7, "t", None)
        except RemoteJobError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as calls:
        calls.start_soon(call)
        with trio.fail_after(WAIT):
            job = await slave.recv()
            assert job["id"] == 7  # integer ids pass through unchanged
            await slave.send({"action": "fail", "error": "CRASH", "reason": "segfault"})
            assert await slave.recv() == {"ok": True}
    (exc,) = outcome
    assert isinstance(exc, RemoteJobError)
    assert exc.frame == {"error": "job_error", "reason": "segfault", "id": 7, "category": "CRASH"}


async def test_local_master_without_a_running_daemon_raises() -> None:
    link = LocalMaster(new_server(), "scheduler")
    with pytest.raises(LocalMasterError, match="gloomd is not running"):
        await link.call("x", "t", None)
