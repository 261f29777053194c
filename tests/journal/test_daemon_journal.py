"""A real gloomd with --journal: every state comes back after kill -9, start-up refusals.

Each test runs the daemon as a process on a journal file in tmp_path,
SIGKILLs (or SIGTERMs) it, starts another on the same file and looks at
what it holds through the protocol (`jobs`, `stats`, `result`, a slave).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

from tests.support.daemon import Daemon, spawn_gloomd
from tests.support.wire import Peer

from .conftest import fingerprint

WAIT = 10.0  # seconds any one answer may take


async def ask(peer: Peer, frame: dict[str, Any]) -> Any:
    await peer.send(frame)
    with trio.fail_after(WAIT):
        return await peer.recv()


def kill(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(WAIT)


def submit(job_id: Any, body: Any = None, **extra: Any) -> dict[str, Any]:
    return {"action": "submit", "id": job_id, "type": "t", "body": body, "detach": True, **extra}


async def listing(master: Peer, state: str) -> list[dict[str, Any]]:
    reply = await ask(master, {"action": "jobs", "state": state, "limit": 1000})
    assert reply["ok"], reply
    return list(reply["jobs"])


async def test_every_state_comes_back_after_kill_9(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    submitted_at = time.time()
    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        # Queued, mixed priorities; one delayed; one waiting on a queued one.
        for i in range(6):
            assert await ask(master, submit(i, i, priority=i % 3)) == {"ok": True, "id": i}
        assert (await ask(master, submit("late", delay=3.0)))["ok"]
        assert (await ask(master, submit("after", after=[0])))["ok"]
        # One that will die (a slave fails it, no retries) and one whose result is kept.
        assert (await ask(master, submit("doomed", priority=9)))["ok"]
        assert (await ask(master, submit("answered", priority=8)))["ok"]
        assert await ask(master, {"action": "pause", "type": "other"}) == {"ok": True}
        slave = await Peer.connect(daemon.slave_port)
        assert await ask(slave, {"action": "join", "type": "t"}) == {"ok": True}
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "doomed"
        assert await ask(slave, {"action": "fail", "error": "ERROR", "reason": "no"}) == {
            "ok": True
        }
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "answered"
        assert await ask(slave, {"action": "respond", "body": "yes"}) == {"ok": True}
        with trio.fail_after(WAIT):
            running = await slave.recv()  # the best queued one: id 2 (priority 2)
        assert running == {"action": "job", "id": 2, "type": "t", "body": 2}
        # The master heard both outcomes: so both are committed by now.
        frames = [await master.recv(), await master.recv()]
        assert {f["id"] for f in frames} == {"doomed", "answered"}
        # A commit after the one holding "running": a pause's ok waits for its commit.
        assert await ask(master, {"action": "pause", "type": "other2"}) == {"ok": True}
        kill(daemon)

    with spawn_gloomd("--journal", journal, "--no-http", capture_logs=True) as daemon:
        master = await Peer.connect(daemon.master_port)
        queued = await listing(master, "queued")
        # Dispatch order: the running one back ahead of its priority's later jobs,
        # with its delivery counted; then by priority, then by acceptance.
        assert [(j["id"], j["priority"], j["attempt"]) for j in queued] == [
            (2, 2, 1), (5, 2, 0), (1, 1, 0), (4, 1, 0), (0, 0, 0), (3, 0, 0),
        ]  # fmt: skip
        assert [j["id"] for j in await listing(master, "delayed")] == ["late"]
        assert [j["id"] for j in await listing(master, "waiting")] == ["after"]
        assert [j["id"] for j in await listing(master, "dead")] == ["doomed"]
        assert all(j["age_s"] >= 0 and j["detach"] for j in queued)
        assert await ask(master, {"action": "result", "id": "answered"}) == {
            "id": "answered",
            "body": "yes",
        }
        dead = await ask(master, {"action": "result", "id": "doomed"})
        assert dead["error"] == "job_error" and dead["id"] == "doomed"
        # Restored ids are live.
        assert (await ask(master, submit(0)))["error"] == "id_exists"
        stats = (await ask(master, {"action": "stats"}))["stats"]
        rows = {row["type"]: row for row in stats["types"]}
        assert rows["other"]["paused"] and rows["other2"]["paused"]
        assert stats["journal"]["path"] == journal and stats["journal"]["sync"] == "full"
        assert stats["totals"]["requeued"] == 1

        # A slave drains them: the running one first, as its second attempt.
        slave = await Peer.connect(daemon.slave_port)
        assert await ask(slave, {"action": "join", "type": "t"}) == {"ok": True}
        got = []
        for _ in range(7):  # six queued, then "after" once 0 completed
            with trio.fail_after(WAIT):
                job = await slave.recv()
            got.append((job["id"], job.get("attempt", 1)))
            assert await ask(slave, {"action": "respond", "body": job["body"]}) == {"ok": True}
        assert got == [(2, 2), (5, 1), (1, 1), (4, 1), (0, 1), (3, 1), ("after", 1)]
        # The delayed job comes when its wall-clock deadline falls, not before.
        with trio.fail_after(WAIT):
            job = await slave.recv()
        assert job["id"] == "late" and time.time() >= submitted_at + 3.0
        assert daemon.stop() == 0
        assert daemon.proc.stderr is not None
        logs = daemon.proc.stderr.read().decode()
    assert "event=restore queued=6 delayed=1 waiting=1 dead=1 results=1 requeued=1" in logs


async def test_sigterm_keeps_detached_jobs_and_fails_attached(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        assert (await ask(master, submit("kept")))["ok"]
        assert (await ask(master, submit("running")))["ok"]
        attached = {"action": "submit", "id": "mine", "type": "u", "body": None}
        assert (await ask(master, attached))["ok"]
        slave = await Peer.connect(daemon.slave_port)
        assert await ask(slave, {"action": "join", "type": "t"}) == {"ok": True}
        with trio.fail_after(WAIT):
            assert (await slave.recv())["id"] == "kept"
        assert daemon.stop() == 0
        with trio.fail_after(WAIT):
            halted = await master.recv()
        assert (halted["error"], halted["id"], halted["category"]) == (
            "job_failed",
            "mine",
            "HALTED",
        )
    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        queued = await listing(master, "queued")
        # Journaled back to queued at shutdown: no loss counted, its delivery kept.
        assert [(j["id"], j["attempt"]) for j in queued] == [("kept", 1), ("running", 0)]
        stats = (await ask(master, {"action": "stats"}))["stats"]
        assert stats["totals"]["requeued"] == 0
        assert stats["totals"]["submitted"] == 2


def _start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0", "--no-http",
         *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_refused_journal_exits_2_with_one_line_and_the_file_untouched(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    before = fingerprint(tmp_path)
    done = _start("--journal", str(bad))
    assert done.returncode == 2
    assert done.stderr == f"gloomd: --journal {bad}: not an SQLite database\n"
    assert done.stdout == ""
    assert fingerprint(tmp_path) == before
    missing = tmp_path / "nowhere" / "j.db"
    done = _start("--journal", str(missing))
    assert (done.returncode, done.stderr) == (
        2,
        f"gloomd: --journal {missing}: directory not writable\n",
    )


def test_bad_record_exits_2(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    with spawn_gloomd("--journal", str(journal), "--no-http") as daemon:
        assert daemon.stop() == 0
    import sqlite3

    conn = sqlite3.connect(journal)
    conn.execute("insert into jobs values (?, ?, ?)", (b"sx", "queued", b"{not json"))
    conn.commit()
    conn.close()
    before = fingerprint(tmp_path)
    done = _start("--journal", str(journal))
    assert done.returncode == 2
    assert done.stderr.startswith(f"gloomd: --journal {journal}: bad record for key b'sx': ")
    assert done.stderr.count("\n") == 1
    assert fingerprint(tmp_path) == before


def test_second_daemon_on_the_same_journal_refuses(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    with spawn_gloomd("--journal", journal, "--no-http"):
        done = _start("--journal", journal)
        assert (done.returncode, done.stderr) == (2, f"gloomd: --journal {journal}: in use\n")


async def test_http_shows_the_journal(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    with spawn_gloomd("--journal", journal, "--sync", "normal") as daemon:
        master = await Peer.connect(daemon.master_port)
        assert (await ask(master, submit("a")))["ok"]  # acked: one commit at least
        base = f"http://127.0.0.1:{daemon.http_port}"

        def get(path: str) -> str:
            with urllib.request.urlopen(base + path, timeout=WAIT) as response:
                return str(response.read().decode())

        metrics = await trio.to_thread.run_sync(get, "/metrics")
        counts = [
            line for line in metrics.splitlines()
            if line.startswith("gloomd_journal_commit_seconds_count")
        ]  # fmt: skip
        assert len(counts) == 1 and float(counts[0].split()[-1]) >= 1
        stats = json.loads(await trio.to_thread.run_sync(get, "/api/stats"))
        found = stats["stats"]["journal"]  # the stats action's answer, as JSON
        assert found["path"] == journal and found["sync"] == "normal" and found["commits"] >= 1


async def test_sync_off_acks_at_once_and_a_clean_stop_keeps_everything(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    with spawn_gloomd("--journal", journal, "--sync", "off", "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        for i in range(50):
            await master.send(submit(i, priority=i % 2))
        with trio.fail_after(WAIT):
            assert [await master.recv() for _ in range(50)] == [
                {"ok": True, "id": i} for i in range(50)
            ]
        stats = (await ask(master, {"action": "stats"}))["stats"]
        assert stats["journal"]["sync"] == "off"
        assert daemon.stop() == 0
    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        queued = [j["id"] for j in await listing(master, "queued")]
        assert queued == [*range(1, 50, 2), *range(0, 50, 2)]
