"""The journal's writer is a boundary: a commit or a record that raises costs its batch only.

An in-process server (tests/conftest.py) on a real journal whose commit, or
whose record of one job, raises what a bug would raise: the held acks of
that batch become journal_error, the daemon keeps serving, and the next
batch is stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from gloomd import durable as durable_module
from gloomd.journal import Batch, JournalStore
from gloomd.records import job_record
from gloomd.server import GloomServer
from tests.support.wire import Peer

WAIT = 10.0


class FlakyStore(JournalStore):
    """A real store whose next commit raises a plain RuntimeError when asked."""

    fail_next = False

    def commit(self, batch: Batch) -> float:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug in the store")
        return super().commit(batch)


async def ask(peer: Peer, frame: dict[str, Any]) -> Any:
    await peer.send(frame)
    with trio.fail_after(WAIT):
        return await peer.recv()


def submit(job_id: Any) -> dict[str, Any]:
    return {"action": "submit", "id": job_id, "type": "t", "body": 1, "detach": True}


async def test_a_commit_that_raises_fails_its_batch_only(
    tmp_path: Path, make_server: Callable[..., Awaitable[GloomServer]]
) -> None:
    store = FlakyStore.open(str(tmp_path / "j.db"), "full")
    try:
        server = await make_server(journal=store)
        master = await Peer.connect(server.master_port)
        store.fail_next = True
        assert await ask(master, submit("a")) == {"error": "journal_error", "reason": "a"}
        assert await ask(master, submit("b")) == {"ok": True, "id": "b"}
        assert [j["id"] for j in (await ask(master, {"action": "jobs"}))["jobs"]] == ["b"]
    finally:
        await server.shutdown()
        store.close()


async def test_a_record_that_raises_fails_its_batch_only(
    tmp_path: Path,
    make_server: Callable[..., Awaitable[GloomServer]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def record(job: Any, *args: Any) -> tuple[str, bytes]:
        if job.id == "bad":
            raise ValueError("cannot make a record")
        return job_record(job, *args)

    monkeypatch.setattr(durable_module, "job_record", record)
    store = JournalStore.open(str(tmp_path / "j.db"), "full")
    try:
        server = await make_server(journal=store)
        master = await Peer.connect(server.master_port)
        assert await ask(master, submit("bad")) == {"error": "journal_error", "reason": "bad"}
        assert await ask(master, submit("good")) == {"ok": True, "id": "good"}
        assert store.load().jobs[0][0] == b"sgood"
    finally:
        await server.shutdown()
        store.close()
