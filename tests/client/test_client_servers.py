"""`gloom.open_masters`: one client over several independent gloomd daemons.

Two and three real daemons run in the test's own trio run on 127.0.0.1; a
daemon is "lost" by cancelling its scope (its sockets close, as after a
SIGKILL).  Slaves hand events back; every wait is bounded by `fail_after`.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import gloom
from gloom._servers import hash_index, merge_stats, parse_servers
from gloomd.config import Config
from gloomd.server import GloomServer
from tests.support.daemon import Daemon, spawn_gloomd

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


class Daemons:
    """In-process daemons, each in its own scope so that one can be lost alone."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.servers: list[GloomServer] = []
        self.scopes: list[trio.CancelScope] = []

    async def start(self, count: int) -> None:
        for _ in range(count):
            server, scope = await self.nursery.start(_run_daemon)
            self.servers.append(server)
            self.scopes.append(scope)

    def masters(self) -> str:
        return ",".join(f"{HOST}:{s.master_port}" for s in self.servers)

    def master_peer(self, index: int) -> str:
        return f"{HOST}:{self.servers[index].master_port}"

    def lose(self, index: int) -> None:
        self.scopes[index].cancel()


async def _run_daemon(
    *, task_status: trio.TaskStatus[tuple[GloomServer, trio.CancelScope]]
) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(GloomServer(Config(master_port=0, slave_port=0)).run)
        task_status.started((server, nursery.cancel_scope))


@pytest.fixture
async def daemons(nursery: trio.Nursery) -> AsyncIterator[Daemons]:
    yield Daemons(nursery)


async def serve_echo(
    port: int, job_type: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A slave answering every job with its body, joined when `start` returns."""
    async with gloom.open_slave(HOST, port, reconnect=False) as slave:
        await slave.join(job_type)
        task_status.started()
        async for job in slave.jobs():
            await job.respond(job.body)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


async def submitted(server: GloomServer) -> int:
    async with gloom.open_master(HOST, server.master_port) as master:
        stats = await master.stats()
    count: int = stats["totals"]["submitted"]
    return count


# -- no sockets ---------------------------------------------------------------------


def test_parse_servers() -> None:
    assert parse_servers("h1:1, h2:2", 9998) == [("h1", 1), ("h2", 2)]
    assert parse_servers(["h1", ("h2", 7), "[::1]:5"], 9998) == [
        ("h1", 9998),
        ("h2", 7),
        ("::1", 5),
    ]
    for bad in ("", "h1:x", "h1:1,h1:1", "h1:0"):
        with pytest.raises(ValueError):
            parse_servers(bad, 9998)


def test_hash_index_is_stable_and_keeps_ids_apart() -> None:
    # crc32 of the id's canonical JSON: the same in every process.
    assert [hash_index(f"job-{n}", 3) for n in range(6)] == [
        hash_index(f"job-{n}", 3) for n in range(6)
    ]
    assert {hash_index(f"job-{n}", 2) for n in range(20)} == {0, 1}
    assert hash_index(1, 1000) != hash_index("1", 1000)


def test_merge_stats_sums_counts_and_rows_by_type() -> None:
    one: dict[str, Any] = {
        "types": [{"type": "a", "queued": 1, "running": 0, "slaves": 1, "idle": 1}],
        "totals": {"submitted": 3, "completed": 2},
        "connections": {"masters": 1, "slaves": 1},
        "uptime_s": 5.0,
    }
    two = {
        "types": [
            {"type": "a", "queued": 2, "running": 1, "slaves": 1, "idle": 0},
            {"type": ["b"], "queued": 4, "running": 0, "slaves": 0, "idle": 0},
        ],
        "totals": {"submitted": 4, "completed": 1},
        "connections": {"masters": 2, "slaves": 0},
        "uptime_s": 9.0,
    }
    merged = merge_stats([one, two])
    assert merged["types"] == [
        {"type": "a", "queued": 3, "running": 1, "slaves": 2, "idle": 1},
        {"type": ["b"], "queued": 4, "running": 0, "slaves": 0, "idle": 0},
    ]
    assert merged["totals"] == {"submitted": 7, "completed": 3}
    assert merged["connections"] == {"masters": 3, "slaves": 1}
    assert merged["uptime_s"] == 9.0
    assert one["types"][0]["queued"] == 1  # the answers themselves are not changed


# -- two and three daemons -------------------------------------------------------------


async def test_round_robin_spreads_submits_and_results_come_back(
    daemons: Daemons, nursery: trio.Nursery
) -> None:
    await daemons.start(2)
    for server in daemons.servers:
        await nursery.start(serve_echo, server.slave_port, "echo")
    async with gloom.open_masters(daemons.masters()) as masters:
        with trio.fail_after(10):
            jobs = [await masters.submit("echo", n) for n in range(6)]
            assert [await job.wait() for job in jobs] == list(range(6))
            many = await masters.submit_many([{"type": "echo", "body": n} for n in range(4)])
            assert [await job.wait() for job in many] == list(range(4))
        places = [masters.server_of(job.id) for job in jobs]
        assert places == [daemons.master_peer(n % 2) for n in range(6)]
        stats = await masters.stats()
    assert [await submitted(s) for s in daemons.servers] == [5, 5]
    assert stats["totals"]["submitted"] == 10
    assert stats["totals"]["completed"] == 10
    assert stats["servers"] == {"up": 2, "total": 2}


async def test_hash_sends_an_id_to_the_same_daemon_from_every_client(daemons: Daemons) -> None:
    await daemons.start(3)
    ids = [f"job-{n}" for n in range(12)]
    async with gloom.open_masters(daemons.masters(), spread="hash") as first:
        for job_id in ids:
            await first.submit("nobody", 0, id=job_id, detach=True)
        places = {job_id: first.server_of(job_id) for job_id in ids}
        assert len(set(places.values())) > 1  # spread, not all on one
        assert places == {i: daemons.master_peer(hash_index(i, 3)) for i in ids}
        async with gloom.open_masters(daemons.masters(), spread="hash") as second:
            # The same id from another client lands on the same daemon, so the
            # daemon's id rules hold: a second live job of that id is refused...
            with pytest.raises(gloom.ServerError) as refused:
                await second.submit("nobody", 1, id=ids[0])
            assert refused.value.error == "id_exists"
            # ...and a unique submit attaches to it.
            attached = await second.submit("nobody", 1, id=ids[1], unique=True)
            assert attached.attached
            # result() of an id it never sent goes straight to its daemon.
            with pytest.raises(gloom.ServerError) as not_ready:
                await second.result(ids[2])
            assert not_ready.value.error == "not_ready"


async def test_after_across_daemons_is_refused_and_pins_to_one(daemons: Daemons) -> None:
    await daemons.start(2)
    async with gloom.open_masters(daemons.masters()) as masters:
        a = await masters.submit("nobody", 0, id="a")
        b = await masters.submit("nobody", 0, id="b")
        assert masters.server_of("a") != masters.server_of("b")
        with pytest.raises(gloom.SpreadError, match="different daemons"):
            await masters.submit("nobody", 0, id="c", after=["a", "b"])
        assert masters.server_of("c") is None  # refused before anything was sent
        # An after naming jobs of one daemon sends the job there, whatever the turn.
        for _ in range(2):
            pinned = await masters.submit("nobody", 0, after=[b.id])
            assert masters.server_of(pinned.id) == masters.server_of("b")
        # Ids this client never sent pin nothing: the daemon of the turn judges.
        with pytest.raises(gloom.ServerError) as unknown:
            await masters.submit("nobody", 0, id="free", after=["elsewhere"])
        assert unknown.value.error == "unknown_dependency"
        assert masters.server_of("free") is None
        assert a.state == "queued"
    async with gloom.open_masters(daemons.masters(), spread="hash") as hashed:
        first = await hashed.submit("nobody", 0, id="x0")
        other = next(f"x{n}" for n in range(1, 50) if hash_index(f"x{n}", 2) != hash_index("x0", 2))
        with pytest.raises(gloom.SpreadError, match="hashes to"):
            await hashed.submit("nobody", 0, id=other, after=[first.id])


async def test_lost_daemon_fails_its_jobs_and_submits_fail_over(daemons: Daemons) -> None:
    await daemons.start(3)
    async with gloom.open_masters(daemons.masters()) as masters:
        jobs = [await masters.submit("nobody", n) for n in range(3)]
        kept = await masters.submit("nobody", 9, id="kept", detach=True)
        assert masters.server_of("kept") == daemons.master_peer(0)
        assert [masters.server_of(job.id) for job in jobs] == [
            daemons.master_peer(n) for n in range(3)
        ]
        daemons.lose(0)
        with trio.fail_after(10):
            with pytest.raises(gloom.JobFailed) as crashed:
                await jobs[0].wait()
            with pytest.raises(gloom.TransportError, match="detached"):
                await kept.wait()
        assert (crashed.value.category, crashed.value.reason) == ("CRASH", jobs[0].id)
        assert jobs[0].state == "failed"
        assert jobs[1].state == jobs[2].state == "queued"  # the others' jobs are untouched
        # New submits skip the lost daemon (within its back-off) and go to the others.
        more = [await masters.submit("nobody", n) for n in range(6)]
        assert {masters.server_of(job.id) for job in more} == {
            daemons.master_peer(1),
            daemons.master_peer(2),
        }
        stats = await masters.stats()
        assert stats["servers"] == {"up": 2, "total": 3}
        assert stats["totals"]["submitted"] == 1 + 1 + 3 + 3
        with pytest.raises(gloom.TransportError, match="cannot result"):
            await masters.result("kept")


async def test_unreachable_daemons_are_skipped_then_none_left(daemons: Daemons) -> None:
    await daemons.start(1)
    dead = closed_port()
    servers = f"{HOST}:{dead},{daemons.masters()}"
    async with gloom.open_masters(servers, retry_delay=60) as masters:
        jobs = [await masters.submit("nobody", n) for n in range(4)]
        assert {masters.server_of(job.id) for job in jobs} == {daemons.master_peer(0)}
        daemons.lose(0)
        with trio.fail_after(10):
            for job in jobs:
                with pytest.raises(gloom.JobFailed):
                    await job.wait()
        with pytest.raises(gloom.TransportError, match="no gloomd can be reached"):
            await masters.submit("nobody", 0)


async def test_a_refused_token_is_raised_not_skipped(make_server: Any) -> None:
    server = await make_server(token="s3cret")
    async with gloom.open_masters(f"{HOST}:{server.master_port}", token="wrong") as masters:
        with pytest.raises(gloom.Unauthorized):
            await masters.submit("nobody", 0)


async def test_pause_is_done_everywhere_and_names_what_it_could_not_reach(
    daemons: Daemons,
) -> None:
    await daemons.start(2)
    async with gloom.open_masters(daemons.masters()) as masters:
        for n in range(2):
            await masters.submit("held", n)  # one queued on each daemon
        await masters.pause("held")
        (row,) = [r for r in (await masters.stats())["types"] if r["type"] == "held"]
        assert (row["queued"], row["paused"]) == (2, True)
        daemons.lose(1)
        with trio.fail_after(10), pytest.raises(gloom.TransportError, match="done on 1 of 2"):
            await masters.resume("held")
        (row,) = [r for r in (await masters.stats())["types"] if r["type"] == "held"]
        assert row["paused"] is False  # resumed on the daemon that is left


# -- the slave and blocking APIs given a list ------------------------------------------


async def test_open_slaves_serves_every_daemon_and_outlives_a_lost_one(
    daemons: Daemons, nursery: trio.Nursery
) -> None:
    await daemons.start(2)
    dead = closed_port()
    slaves_at = ",".join(f"{HOST}:{s.slave_port}" for s in daemons.servers)
    served: list[Any] = []

    async def serve(*, task_status: trio.TaskStatus[gloom.AsyncSlaves]) -> None:
        async with gloom.open_slaves(
            f"{slaves_at},{HOST}:{dead}", reconnect_delay=0.05, max_reconnect_delay=0.1
        ) as slaves:
            await slaves.join("echo")
            task_status.started(slaves)
            async for job in slaves.jobs():
                served.append(job.body)
                await job.respond(job.body)

    slaves = await nursery.start(serve)
    assert slaves.connected == 2  # the third daemon is not there: tried again later
    async with gloom.open_masters(daemons.masters()) as masters:
        with trio.fail_after(10):
            jobs = [await masters.submit("echo", n) for n in range(4)]
            assert [await job.wait() for job in jobs] == list(range(4))
            daemons.lose(0)
            more = [await masters.submit("echo", n) for n in range(4, 8)]
            assert {masters.server_of(job.id) for job in more} == {daemons.master_peer(1)}
            assert [await job.wait() for job in more] == list(range(4, 8))
    assert sorted(served) == list(range(8))
    with pytest.raises(gloom.TransportError):
        async with gloom.open_slaves(f"{HOST}:{dead}"):
            pass  # pragma: no cover - none can be reached: refused at once


def serve_blocking(daemon: Daemon, job_type: str, count: int) -> threading.Thread:
    slave = gloom.Slave(daemon.slave_addr, timeout=10)
    slave.join(job_type)

    def run() -> None:
        try:
            for _ in range(count):
                job = slave.job()
                slave.respond(job.body)
        finally:
            slave.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_blocking_masters_spread_receive_and_fail_over() -> None:
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    with spawn_gloomd(env=quiet) as one, spawn_gloomd(env=quiet) as two:
        peers = [f"{HOST}:{one.master_port}", f"{HOST}:{two.master_port}"]
        threads = [serve_blocking(one, "echo", 2), serve_blocking(two, "echo", 4)]
        with gloom.Masters(",".join(peers), timeout=10) as masters:
            ids = [masters.submit(type="echo", body=n) for n in range(4)]
            assert [masters.server_of(i) for i in ids] == peers * 2
            assert sorted(masters.receive().body for _ in ids) == [0, 1, 2, 3]
            assert masters.stats()["totals"]["submitted"] == 4
            doomed = masters.submit(type="nobody", body=0)
            assert masters.server_of(doomed) == peers[0]
            one.stop(signal.SIGKILL)
            with pytest.raises(gloom.JobFailed) as crashed:
                masters.receive()
            assert (crashed.value.category, crashed.value.reason) == ("CRASH", doomed)
            later = [masters.submit(type="echo", body=n) for n in (5, 6)]
            assert {masters.server_of(i) for i in later} == {peers[1]}
            assert sorted(masters.receive().body for _ in later) == [5, 6]
            with pytest.raises(gloom.WaitTimeout):
                masters.receive(timeout=0.01)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        with pytest.raises(gloom.TransportError):
            masters.stats()


def test_blocking_slaves_serve_every_daemon() -> None:
    quiet = {"GLOOMD_TEST_QUIET_LOGS": "1"}
    with spawn_gloomd(env=quiet) as one, spawn_gloomd(env=quiet) as two:
        peers = [f"{HOST}:{one.master_port}", f"{HOST}:{two.master_port}"]
        with gloom.Slaves(f"{HOST}:{one.slave_port},{HOST}:{two.slave_port}", timeout=10) as slaves:
            slaves.join("double")

            def run() -> None:
                for _ in range(4):
                    job = slaves.job()
                    slaves.progress("half way")
                    slaves.respond(job.body * 2)

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            with gloom.Masters(",".join(peers), timeout=10) as masters:
                ids = [masters.submit(type="double", body=n) for n in range(4)]
                assert {masters.server_of(i) for i in ids} == set(peers)
                assert sorted(masters.receive().body for _ in ids) == [0, 2, 4, 6]
            thread.join(10)
            assert not thread.is_alive()
            with pytest.raises(gloom.ProtocolError):
                slaves.respond(1)  # answered already


async def test_exceptions_leave_the_several_daemon_blocks_unwrapped(daemons: Daemons) -> None:
    """As `open_master`'s: the block's own exception, not an ExceptionGroup."""
    await daemons.start(2)
    slaves_at = ",".join(f"{HOST}:{s.slave_port}" for s in daemons.servers)
    with trio.fail_after(10):
        with pytest.raises(KeyError):
            async with gloom.open_masters(daemons.masters()) as masters:
                await masters.submit("t", 1)  # a task of the nursery is running
                raise KeyError("mine")
        with pytest.raises(KeyError):
            async with gloom.open_slaves(slaves_at):
                raise KeyError("mine")
