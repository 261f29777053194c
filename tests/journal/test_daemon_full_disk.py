"""A full disk under a running gloomd: journal_error frames, nothing acked lost, still serving.

(A full disk stays full: submits go on being refused until space is freed
outside, and even a delete may be.)

The disk is a file size limit on the daemon's process (RLIMIT_FSIZE, with
SIGXFSZ ignored): past it, SQLite's writes fail as on a full disk (EFBIG
instead of ENOSPC: SQLITE_FULL or SQLITE_IOERR), for real, nothing mocked.
The journal's files are the only regular files the daemon writes.
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path
from typing import Any

import trio

from tests.support.daemon import spawn_gloomd
from tests.support.wire import Peer

LIMIT = 256 * 1024  # bytes per file
BODY = "x" * 2000
WAIT = 10.0


def small_disk() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def submit(job_id: Any) -> dict[str, Any]:
    return {"action": "submit", "id": job_id, "type": "t", "body": BODY, "detach": True}


async def test_full_disk_answers_journal_error_and_keeps_serving(tmp_path: Path) -> None:
    journal = str(tmp_path / "j.db")
    acked: list[int] = []
    refused: list[int] = []
    with spawn_gloomd(
        "--journal", journal, "--no-http", preexec_fn=small_disk, capture_logs=True
    ) as daemon:
        master = await Peer.connect(daemon.master_port)
        slave = await Peer.connect(daemon.slave_port)
        await slave.send({"action": "join", "type": "t"})  # takes one job and keeps it
        with trio.fail_after(WAIT):
            assert await slave.recv() == {"ok": True}
        # Submit in windows of 20 until a few windows in a row are refused.
        n = 0
        with trio.fail_after(60):
            while len(refused) < 100:
                for _ in range(20):
                    await master.send(submit(n))
                    n += 1
                for _ in range(20):
                    reply = await master.recv()
                    if reply.get("ok"):
                        acked.append(reply["id"])
                    else:
                        assert reply == {"error": "journal_error", "reason": reply["reason"]}
                        refused.append(reply["reason"])
                assert n < 5000, "the disk never filled"
        assert acked and refused
        assert sorted(acked + refused) == list(range(n))
        # The slave was handed an acked job, never a refused one.
        with trio.fail_after(WAIT):
            held = await slave.recv()
        assert held["id"] in acked
        # Still serving: refused ids are free, the daemon answers.
        await master.send({"action": "result", "id": refused[0]})
        with trio.fail_after(WAIT):
            assert await master.recv() == {"error": "unknown_id", "reason": refused[0]}
        # Deletes are answered too: ok once stored, journal_error while the disk
        # is full (then the daemon has forgotten the job and writes that later).
        asked = [i for i in acked if i != held["id"]][:10]
        for job_id in asked:
            await master.send({"action": "delete", "id": job_id})
        deleted = []
        with trio.fail_after(WAIT):
            for job_id in asked:
                reply = await master.recv()
                if reply.get("ok"):
                    assert reply == {"ok": True, "id": job_id}
                    deleted.append(job_id)
                else:
                    assert reply == {"error": "journal_error", "reason": job_id}
        await master.send({"action": "stats"})
        with trio.fail_after(WAIT):
            stats = (await master.recv())["stats"]
        assert stats["types"][0]["queued"] == len(acked) - 1 - len(asked)
        assert stats["totals"]["withdrawn"] == len(refused)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(WAIT)
        assert daemon.proc.stderr is not None
        logs = daemon.proc.stderr.read().decode()
    assert "event=journal_error" in logs

    with spawn_gloomd("--journal", journal, "--no-http") as daemon:
        master = await Peer.connect(daemon.master_port)
        await master.send({"action": "jobs", "limit": 1000})
        with trio.fail_after(WAIT):
            page = await master.recv()
        held_ids = {job["id"] for job in page["jobs"]}
        assert set(acked) - set(deleted) <= held_ids <= set(acked)
