"""In-process masters (`gloomd.local`): a master in every rule, but no connection."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gloomd.local import LocalMaster, RemoteJobError
from gloomd.server import GloomServer
from tests.support.wire import Peer, join

pytestmark = pytest.mark.timeout(30)


async def test_a_request_is_judged_as_on_the_master_port(gloomd_server: GloomServer) -> None:
    local = LocalMaster(gloomd_server, "local")
    master = await Peer.connect(gloomd_server.master_port)
    for frame in (
        {"action": "ping"},
        {"action": "submit", "id": 1, "type": "t", "priority": "high", "body": None},
        {"action": "submit", "type": "t", "body": None},
        {"action": "respond", "body": None},
        {"action": "nope"},
        {"action": "cancel", "id": "unknown"},
    ):
        assert local.request(frame) == [await master.request(frame)], frame


async def test_it_is_not_a_connection_but_its_jobs_count(gloomd_server: GloomServer) -> None:
    local = LocalMaster(gloomd_server, "local")
    assert local.request({"action": "submit", "id": "a", "type": "t", "body": 1}) == [
        {"ok": True, "id": "a"}
    ]
    (answer,) = local.request({"action": "stats"})
    assert answer["stats"]["connections"] == {"masters": 0, "slaves": 0}
    assert answer["stats"]["types"] == [
        {
            "type": "t",
            "queued": 1,
            "running": 0,
            "slaves": 0,
            "idle": 0,
            "delayed": 0,
            "waiting": 0,
            "dead": 0,
            "paused": False,
            "completed": 0,
            "failed": 0,
        }
    ]
    # Leaving removes its queued jobs, as a master that disconnects.
    local.close()
    master = await Peer.connect(gloomd_server.master_port)
    stats = (await master.request({"action": "stats"}))["stats"]
    assert stats["types"] == [] and stats["connections"]["masters"] == 1


async def test_call_returns_the_result_that_a_slave_sent(gloomd_server: GloomServer) -> None:
    local = LocalMaster(gloomd_server, "local")
    slave = await join(gloomd_server.slave_port, "t")
    got: list[object] = []

    async def submit() -> None:
        got.append(await local.call("j", "t", {"n": 1}, priority=3, timeout=9))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit)
        with trio.fail_after(5):
            job = await slave.recv()
            assert job["id"] == "j" and job["body"] == {"n": 1} and job["timeout"] == 9
            await slave.send({"action": "progress", "body": "half"})  # ignored by call
            assert await slave.request({"action": "respond", "body": "done"}) == {"ok": True}
    assert got == ["done"]


async def test_halt_and_a_stopped_server_fail_the_waiting_calls(nursery: trio.Nursery) -> None:
    from gloomd.config import Config

    server: GloomServer = await nursery.start(GloomServer(Config(master_port=0, slave_port=0)).run)
    local = LocalMaster(server, "local")
    failures: list[BaseException] = []

    async def submit(job_id: str) -> None:
        try:
            await local.call(job_id, "t", None)
        except RemoteJobError as exc:
            failures.append(exc)

    async with trio.open_nursery() as calls:
        calls.start_soon(submit, "queued")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            await server.shutdown()  # answers every unanswered job with HALTED
    (halted,) = failures
    assert isinstance(halted, RemoteJobError)
    assert halted.frame == {
        "error": "job_failed",
        "reason": "queued",
        "id": "queued",
        "category": "HALTED",
    }
    with pytest.raises(RemoteJobError, match="HALTED"):
        await local.call("late", "t", None)  # a halted broker takes no new work
