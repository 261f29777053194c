"""The lifecycle through the trio and blocking masters, over a stand-in master port.

The port answers with frames written by hand from the reference (section 2 of
durability-and-operations.md), so these tests pin the client's side of the
contract: what each method sends, what it returns, what it raises.  The same
methods against the real daemon are in tests/e2e/test_lifecycle_edges_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import gloom
from tests.support.master_port import MasterPort, paged_jobs, row

pytestmark = pytest.mark.timeout(30)

ROWS = [row(f"j{n}", "t" if n % 2 else "u", "queued" if n % 3 else "dead") for n in range(2500)]


def admin(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """gloomd's answers to one scripted scene (see each test)."""
    action = frame.get("action")
    job_id = frame.get("id")
    if action == "submit":
        if job_id == "live":
            return [{"ok": True, "id": job_id, "attached": True}]
        if job_id == "retried":
            failure = {"error": "job_error", "reason": {"type": "Retry", "message": "later"},
                       "id": job_id, "category": "ERROR", "attempt": 4}  # fmt: skip
            return [{"ok": True, "id": job_id}, failure]
        return [{"ok": True, "id": job_id}]
    if action == "kick":
        if "type" in frame:
            return [{"ok": True, "kicked": min(frame.get("limit", 7), 7)}]
        if job_id == "dead-1":
            return [{"ok": True, "id": job_id}]
        if job_id == "queued-1":
            return [{"error": "invalid_state", "reason": "queued"}]
        return [{"error": "unknown_id", "reason": job_id}]
    if action == "delete":
        if job_id == "busy":
            return [{"error": "invalid_state", "reason": "running"}]
        return [{"ok": True, "id": job_id}]
    if action in ("pause", "resume"):
        return [{"ok": True}]
    if action == "jobs":
        return paged_jobs(ROWS)(frame)
    return [{"error": "unknown_action", "reason": action}]


async def start(nursery: trio.Nursery) -> MasterPort:
    port: MasterPort = await nursery.start(MasterPort(admin).run)
    return port


async def test_trio_job_attached_and_attempt(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    async with gloom.open_master("127.0.0.1", port.port) as master:
        fresh = await master.submit("t", 1, id="new", unique=True)
        joined = await master.submit("t", 1, id="live", unique=True, detach=True)
        retried = await master.submit("t", 1, id="retried", retries=3, backoff=0.5, delay=2)
        with trio.fail_after(10):
            with pytest.raises(gloom.JobError) as failed:
                await retried.wait()
    assert (fresh.attached, joined.attached, retried.attached) == (False, True, False)
    assert fresh.attempt is None  # not finished: no final frame, no count
    assert retried.attempt == 4 and failed.value.attempt == 4
    sent = [f for f in port.received if f["action"] == "submit"]
    assert sent[0]["unique"] is True and "retries" not in sent[0]
    assert (sent[2]["delay"], sent[2]["retries"], sent[2]["backoff"]) == (2, 3, 0.5)
    assert "unique" not in sent[2]


async def test_trio_submit_many_takes_lifecycle_keys(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    async with gloom.open_master("127.0.0.1", port.port) as master:
        jobs = await master.submit_many(
            [{"type": "t", "body": 1, "id": "live", "unique": True}, {"type": "t", "body": 2,
              "id": "plain", "delay": 0.5, "retries": 1}]
        )  # fmt: skip
    assert [job.attached for job in jobs] == [True, False]
    assert port.received[1]["delay"] == 0.5 and port.received[1]["retries"] == 1


async def test_trio_admin_methods(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    async with gloom.open_master("127.0.0.1", port.port) as master:
        assert await master.kick("dead-1") is True
        assert await master.kick_type("t") == 7
        assert await master.kick_type("t", limit=2) == 2
        assert await master.delete("old") is True
        assert await master.pause("t") is None
        assert await master.resume("t") is None
        with pytest.raises(gloom.InvalidState) as not_dead:
            await master.kick("queued-1")
        with pytest.raises(gloom.UnknownJob) as unknown:
            await master.kick("never")
        with pytest.raises(gloom.InvalidState) as running:
            await master.delete("busy")
        assert await master.kick("dead-1") is True  # the connection is fine after errors
    assert (not_dead.value.state, not_dead.value.id) == ("queued", "queued-1")
    assert unknown.value.id == "never" and isinstance(unknown.value, gloom.ServerError)
    assert running.value.state == "running"
    assert port.received[2] == {"action": "kick", "type": "t", "limit": 2}


async def test_trio_delete_of_own_job_cancels_its_handle(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    async with gloom.open_master("127.0.0.1", port.port) as master:
        job = await master.submit("t", 1, id="mine", detach=True)
        await master.delete("mine")
        assert job.state == "cancelled"
        with pytest.raises(gloom.JobCancelled):
            await job.wait(0)


async def test_trio_jobs_follows_the_cursor(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    async with gloom.open_master("127.0.0.1", port.port) as master:
        every = [info async for info in master.jobs()]
        assert [info.id for info in every] == [r["id"] for r in ROWS]
        assert all(isinstance(info, gloom.JobInfo) for info in every)
        requests = [f for f in port.received if f["action"] == "jobs"]
        assert [f.get("cursor") for f in requests] == [None, {"at": 1000}, {"at": 2000}]
        assert {f["limit"] for f in requests} == {1000}

        port.received.clear()
        dead_t = [i async for i in master.jobs("t", state="dead", limit=150, page_size=100)]
        expected = [r["id"] for r in ROWS if r["type"] == "t" and r["state"] == "dead"][:150]
        assert [info.id for info in dead_t] == expected
        assert {info.state for info in dead_t} == {gloom.ListedState.DEAD}
        assert [(f["limit"], f["type"], f["state"]) for f in port.received] == [
            (100, "t", "dead"),
            (50, "t", "dead"),  # no more rows than asked for
        ]

        page = await master.jobs_page(limit=2)
        assert [i.id for i in page.jobs] == ["j0", "j1"] and page.next_cursor == {"at": 2}
        with pytest.raises(ValueError, match="page_size must be an integer from 1 to 1000"):
            master.jobs(page_size=1001)
        with pytest.raises(ValueError, match="state must be one of"):
            master.jobs(state="buried")


async def test_trio_jobs_stops_when_the_loop_does(nursery: trio.Nursery) -> None:
    port = await start(nursery)
    async with gloom.open_master("127.0.0.1", port.port) as master:
        async for info in master.jobs(page_size=10):
            if info.id == "j3":
                break
    assert port.actions() == ["jobs"]  # one page, not the 250 it could follow


async def test_blocking_master_lifecycle(nursery: trio.Nursery) -> None:
    # The blocking client runs in a thread, the stand-in port on the test's trio loop.
    port = await start(nursery)

    def use() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with gloom.Master(("127.0.0.1", port.port), timeout=10) as master:
            assert master.submit("new", "t", 1, unique=True) == "new"
            seen["fresh"] = master.last_attached
            assert master.submit("live", "t", 1, unique=True, delay=3) == "live"
            seen["joined"] = master.last_attached
            master.submit("retried", "t", 1, retries=3, backoff=2)
            try:
                master.receive()
            except gloom.JobError as exc:
                seen["attempt"] = exc.attempt
            seen["kick"] = master.kick("dead-1")
            seen["kicked"] = master.kick_type("t", limit=3)
            seen["delete"] = master.delete("x")
            master.pause("t")
            master.resume("t")
            try:
                master.kick("queued-1")
            except gloom.InvalidState as exc:
                seen["state"] = exc.state
            try:
                master.delete("busy")
            except gloom.InvalidState as exc:
                seen["busy"] = str(exc)
            seen["all"] = [info.id for info in master.jobs()]
            seen["some"] = [info.id for info in master.jobs("u", limit=1001, page_size=1000)]
            seen["page"] = master.jobs_page(state=gloom.ListedState.DEAD, limit=1)
        return seen

    with trio.fail_after(20):
        seen = await trio.to_thread.run_sync(use)
    assert (seen["fresh"], seen["joined"], seen["attempt"]) == (False, True, 4)
    assert (seen["kick"], seen["kicked"], seen["delete"]) == (True, 3, True)
    assert seen["state"] == "queued" and seen["busy"] == "job 'busy' is running (invalid_state)"
    assert seen["all"] == [r["id"] for r in ROWS]
    assert seen["some"] == [r["id"] for r in ROWS if r["type"] == "u"][:1001]
    assert seen["page"].jobs[0].id == "j0" and seen["page"].jobs[0].state == "dead"
    limits = [f["limit"] for f in port.received if f["action"] == "jobs" and f.get("type") == "u"]
    assert limits == [1000, 1]
    submits = [f for f in port.received if f["action"] == "submit"]
    assert submits[1]["delay"] == 3 and submits[1]["unique"] is True
