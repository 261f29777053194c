"""The HTTP admin API under --journal: its answers wait for the commit, as the master port's.

`POST /api/kick`, `/api/pause`... are answered through the daemon's own
in-process master (`gloomd.local.LocalMaster.ask`); with a journal, an
answer 200 means the change is stored: a kill -9 right after it loses
nothing, and a commit that fails answers `journal_error` (400) instead.
Real daemons on real files; a commit is made to fail for real, by a write
lock held from outside (SQLite's busy timeout) or by a file size limit.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import trio

from gloomwire import codec
from tests.support.daemon import Daemon, spawn_gloomd
from tests.support.httpkit import Client
from tests.support.wire import Peer

from .test_daemon_full_disk import small_disk
from .test_daemon_journal import WAIT, ask, kill, listing, submit

JSON = {"Content-Type": "application/json"}


async def post(client: Client, action: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST /api/ACTION: (status, answer)."""
    with trio.fail_after(WAIT):
        reply = await client.request("POST", f"/api/{action}", headers=JSON, body=codec.dumps(body))
    return reply.status, reply.json()


async def http_client(daemon: Daemon) -> Client:
    assert daemon.http_port is not None
    return await Client.open(daemon.http_port)


async def paused_types(master: Peer) -> set[Any]:
    stats = (await ask(master, {"action": "stats"}))["stats"]
    return {row["type"] for row in stats["types"] if row["paused"]}


async def test_http_answers_200_survive_kill_9(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    with spawn_gloomd("--journal", journal) as daemon:
        master = await Peer.connect(daemon.master_port)
        assert (await ask(master, submit("doomed")))["ok"]
        slave = await Peer.connect(daemon.slave_port)
        assert await ask(slave, {"action": "join", "type": "t"}) == {"ok": True}
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "doomed"
        await slave.send({"action": "fail", "error": "ERROR", "reason": "no"})
        with trio.fail_after(WAIT):
            assert (await master.recv())["error"] == "job_error"  # dead, and stored
        await slave.aclose()  # no slave to take it back once kicked
        client = await http_client(daemon)
        assert await post(client, "kick", {"id": "doomed"}) == (200, {"ok": True, "id": "doomed"})
        assert await post(client, "pause", {"type": "other"}) == (200, {"ok": True})
        kill(daemon)  # right after the answer
        await client.aclose()

    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        assert [j["id"] for j in await listing(master, "queued")] == ["doomed"]
        assert await listing(master, "dead") == []
        assert await paused_types(master) == {"other"}


async def test_http_answer_waits_for_a_commit_that_cannot_happen(tmp_path: Path) -> None:
    """While someone else holds the journal's write lock no commit can store a
    pause: the HTTP answer is `journal_error` (the commit fails at SQLite's busy
    timeout), never a 200 for a change a kill -9 then loses.  (Before the HTTP
    answers waited for the commit, this one was 200 at once.)"""
    journal = str(tmp_path / "j.db")
    with spawn_gloomd("--journal", journal) as daemon:
        client = await http_client(daemon)
        assert await post(client, "pause", {"type": "first"}) == (200, {"ok": True})
        lock = sqlite3.connect(journal, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the write lock, as a sqlite3 shell's
            status, answer = await post(client, "pause", {"type": "locked"})
            kill(daemon)
        finally:
            lock.close()
        await client.aclose()
    assert (status, answer) == (400, {"error": "journal_error", "reason": "locked"})

    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        assert await paused_types(master) == {"first"}


async def test_http_answers_journal_error_on_a_full_disk(tmp_path: Path) -> None:
    """A full disk (a file size limit on the daemon): pauses asked over HTTP are
    200 while stored and `journal_error` once a commit fails; after a kill -9,
    every one answered 200 is paused, and besides them at most the refused one."""
    journal = str(tmp_path / "j.db")
    stored: list[str] = []
    refused: str | None = None
    with spawn_gloomd("--journal", journal, preexec_fn=small_disk) as daemon:
        master = await Peer.connect(daemon.master_port)
        # Fill the disk with detached jobs until a window of them is refused.
        n = 0
        deadline = time.monotonic() + 60
        while True:
            for _ in range(20):
                await master.send(submit(n, "x" * 2000))
                n += 1
            replies = []
            with trio.fail_after(WAIT):
                for _ in range(20):
                    replies.append(await master.recv())
            if not any(reply.get("ok") for reply in replies):
                break
            assert n < 5000 and time.monotonic() < deadline, "the disk never filled"
        # A small commit may still fit in the WAL's last bytes: pause new types
        # until one is refused (each stored pause takes a page of what is left).
        client = await http_client(daemon)
        for i in range(200):
            name = f"p{i}"
            status, answer = await post(client, "pause", {"type": name})
            if status == 200:
                assert answer == {"ok": True}
                stored.append(name)
                continue
            assert (status, answer) == (400, {"error": "journal_error", "reason": name})
            refused = name
            break
        assert refused is not None, "every pause was answered 200 on a full disk"
        kill(daemon)
        await client.aclose()

    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        # Every pause answered 200 is there.  The refused one stays in effect
        # in memory and "is written with the next commit" (README, journal
        # errors): a commit that ran before the kill, once the failed one gave
        # the WAL's space back, may have stored it; nothing else may appear.
        paused = await paused_types(master)
        assert paused in (set(stored), {*stored, refused}), (paused - set(stored), refused)


async def test_concurrent_http_deletes_each_get_their_own_answer(tmp_path: Path) -> None:
    """Held answers of one seat are matched to their requests in order: twenty
    deletes on twenty connections at once each get their own id back, 200,
    and none of those jobs is there after a kill -9."""
    journal = str(tmp_path / "j.db")
    ids = [f"job-{i}" for i in range(20)]
    answers: dict[str, tuple[int, Any]] = {}
    with spawn_gloomd("--journal", journal) as daemon:
        master = await Peer.connect(daemon.master_port)
        for job_id in [*ids, "kept"]:
            assert (await ask(master, submit(job_id)))["ok"]
        clients = [await http_client(daemon) for _ in ids]

        async def delete(client: Client, job_id: str) -> None:
            answers[job_id] = await post(client, "delete", {"id": job_id})

        async with trio.open_nursery() as nursery:
            for client, job_id in zip(clients, ids, strict=True):
                nursery.start_soon(delete, client, job_id)
        kill(daemon)
        for client in clients:
            await client.aclose()
    assert answers == {job_id: (200, {"ok": True, "id": job_id}) for job_id in ids}

    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        assert [j["id"] for j in await listing(master, "queued")] == ["kept"]
