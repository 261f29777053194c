"""protocol.md across daemons: every engine is a daemon on one Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gloomd.cluster.steps import JobSpec, Reply
from tests.cluster.conftest import Daemon, decode

MakeDaemon = Callable[..., Awaitable[Daemon]]

JOB_A = b'{"action":"job","id":"a","type":"t","body":{"x":1}}'


def frames(reply: Reply) -> list[object]:
    return [decode(f) for f in reply.frames]


async def test_a_job_crosses_daemons_and_its_result_comes_back(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    assert frames(await d1.engine.join(1, "t", 1)) == [{"ok": True}]
    ack = await d2.engine.submit(7, JobSpec("a", "t", {"x": 1}))
    assert frames(ack) == [{"ok": True, "id": "a"}]
    (job,) = await d1.mailbox.take()
    # Byte for byte Gloom's frame, with the slave's join epoch.
    assert (job.kind, job.peer, job.epoch, job.frame[4:]) == ("job", 1, 1, JOB_A)
    assert frames(await d1.engine.respond(1, [1, 2])) == [{"ok": True}]
    assert await d2.mailbox.frames() == [(7, {"id": "a", "body": [1, 2]})]
    assert d1.mailbox.items == []


async def test_ids_are_unique_in_the_cluster_until_answered(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec(5, "t", None))
    assert frames(await d2.engine.submit(2, JobSpec(5, "t", None))) == [
        {"error": "id_exists", "reason": 5}
    ]
    # "5" is another id than 5.
    assert frames(await d2.engine.submit(2, JobSpec("5", "t", None)))[0]["ok"]  # type: ignore[index]
    assert (await d2.engine.join(1, "t", 1)).code == "job"  # the job comes with the ok
    await d2.engine.respond(1, "done")
    await d1.mailbox.take()
    assert frames(await d2.engine.submit(2, JobSpec(5, "t", None))) == [{"ok": True, "id": 5}]


async def test_strict_order_across_daemons(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    order = [
        (d1, "low", -1),
        (d2, "a0", 0),
        (d1, "huge", 10**30),
        (d2, "b0", 0),
        (d1, "top+1", 2**53 + 1),
        (d2, "top", 2**53),
        (d1, "c0", 0),
        (d2, "neg-huge", -(10**30)),
    ]
    for daemon, job_id, priority in order:
        await daemon.engine.submit(1, JobSpec(job_id, "t", None, priority=priority))
    seen = []
    reply = await d2.engine.join(3, "t", 1)
    while reply.code == "job":
        seen.append(decode(reply.frames[1])["id"])  # type: ignore[index]
        reply = await d2.engine.respond(3, None)
    assert seen == ["huge", "top+1", "top", "a0", "b0", "c0", "low", "neg-huge"]


async def test_idle_slaves_share_work_longest_idle_first(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.join(1, "t", 1)
    await d2.engine.join(2, "t", 1)
    await d1.engine.join(3, "t", 1)
    for n in range(3):
        await d2.engine.submit(9, JobSpec(n, "t", n))
    first = await d1.mailbox.take(2)
    second = await d2.mailbox.take(1)
    assert [(d.peer, decode(d.frame)["id"]) for d in first] == [(1, 0), (3, 2)]
    assert [(d.peer, decode(d.frame)["id"]) for d in second] == [(2, 1)]
    # Slave 2 answers first, so it idles first and is next in line.
    await d2.engine.respond(2, None)
    await d1.engine.respond(1, None)
    await d1.engine.submit(9, JobSpec("next", "t", None))
    # Two results for master 9 (on d2), then the job for slave 2.
    got = [(d.kind, d.peer) for d in await d2.mailbox.take(3)]
    assert got == [("frame", 9), ("frame", 9), ("job", 2)]


async def test_progress_and_failure_reach_the_submitting_master(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(4, JobSpec("p", "t", None))
    assert (await d2.engine.join(8, "t", 2)).code == "job"
    await d2.engine.progress(8, {"pct": 50})
    await d2.engine.fail(8, "ERROR", "boom")
    assert await d1.mailbox.frames(2) == [
        (4, {"id": "p", "progress": {"pct": 50}}),
        (4, {"error": "job_error", "reason": "boom", "id": "p", "category": "ERROR"}),
    ]


async def test_a_master_leaving_withdraws_its_jobs(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("run", "t", None))
    await d1.engine.submit(1, JobSpec("wait", "t", None))
    assert (await d2.engine.join(5, "t", 1)).code == "job"
    await d1.engine.master_gone(1)
    stats = await d2.engine.stats()
    assert stats["types"][0]["queued"] == 0 and stats["types"][0]["running"] == 0
    assert stats["totals"]["withdrawn"] == 2
    # The slave still works on the orphan: its answer is acked and dropped,
    # and both ids are free again.
    assert frames(await d2.engine.respond(5, "late")) == [{"ok": True}]
    assert frames(await d2.engine.submit(2, JobSpec("run", "t", None)))[0] == {
        "ok": True,
        "id": "run",
    }
    assert d1.mailbox.items == []


async def test_a_lost_slave_requeues_its_job_then_crash(make_daemon: MakeDaemon) -> None:
    from gloomd.cluster.settings import ClusterLimits

    d1 = await make_daemon(limits=ClusterLimits(max_retries=1))
    await d1.engine.submit(1, JobSpec("j", "t", "b"))
    first = await d1.engine.join(10, "t", 1)
    assert "attempt" not in decode(first.frames[1])  # type: ignore[operator]
    await d1.engine.slave_gone(10)
    reply = await d1.engine.join(11, "t", 1)
    assert decode(reply.frames[1])["attempt"] == 2  # type: ignore[index]
    await d1.engine.slave_gone(11)
    assert await d1.mailbox.frames() == [
        (1, {"error": "job_failed", "reason": "j", "id": "j", "category": "CRASH"})
    ]
    totals = (await d1.engine.stats())["totals"]
    assert (totals["requeued"], totals["failed"]) == (1, 1)


async def test_a_rejoin_puts_the_job_back_in_its_place(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon()
    for job_id in ("first", "second"):
        await d1.engine.submit(1, JobSpec(job_id, "t", None))
    reply = await d1.engine.join(2, "t", 1)
    assert decode(reply.frames[1])["id"] == "first"  # type: ignore[index]
    reply = await d1.engine.join(2, "t", 2)
    # Back ahead of "second", no loss counted; the redelivery says attempt 2.
    job = decode(reply.frames[1])
    assert (job["id"], job["attempt"]) == ("first", 2)  # type: ignore[index]
    assert (await d1.engine.stats())["totals"]["requeued"] == 0


async def test_cancel(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("q", "t", None))
    await d1.engine.submit(1, JobSpec("r", "t", None, priority=1))
    await d1.engine.submit(1, JobSpec("bg", "t", None, detach=True))
    assert (await d2.engine.join(3, "t", 1)).code == "job"  # "r" runs
    assert frames(await d2.engine.cancel(1, "q")) == [{"error": "unknown_id", "reason": "q"}]
    assert frames(await d1.engine.cancel(1, "r")) == [
        {"error": "invalid_state", "reason": "running"}
    ]
    assert frames(await d1.engine.cancel(1, "q")) == [{"ok": True, "id": "q"}]
    # Any master may cancel a detached job.
    assert frames(await d2.engine.cancel(9, "bg")) == [{"ok": True, "id": "bg"}]
    assert (await d1.engine.stats())["totals"]["cancelled"] == 2
    assert frames(await d1.engine.cancel(1, "q")) == [{"error": "unknown_id", "reason": "q"}]


async def test_timeout_fails_the_job_and_drops_the_late_answer(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon()
    await d1.engine.submit(1, JobSpec("slow", "t", None, timeout=0.2))
    reply = await d1.engine.join(2, "t", 1)
    assert decode(reply.frames[1])["timeout"] == 0.2  # type: ignore[index]
    assert await d1.mailbox.frames() == [
        (
            1,
            {
                "error": "job_failed",
                "reason": "slow",
                "id": "slow",
                "category": "TIMEOUT",
            },
        )
    ]
    await d1.engine.submit(1, JobSpec("next", "t", None))
    reply = await d1.engine.respond(2, "late")
    # Acked and dropped; the slave is free for the next job at once.
    assert decode(reply.frames[1])["id"] == "next"  # type: ignore[index]
    assert d1.mailbox.items == []


async def test_stats_are_cluster_totals_on_every_daemon(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    d1.engine.counts = lambda: (2, 1)
    d2.engine.counts = lambda: (1, 3)
    await d1.engine.submit(1, JobSpec("x", "t", None))
    await d2.engine.submit(1, JobSpec("y", ["t", 2], None))
    await d2.engine.renew()
    one, two = await d1.engine.stats(), await d2.engine.stats()
    for stats in (one, two):
        assert stats["totals"]["submitted"] == 2
        assert stats["connections"] == {"masters": 3, "slaves": 4}
        assert [row["type"] for row in stats["types"]] == ["t", ["t", 2]]
    only = await d1.engine.stats(["t", 2], one=True)
    assert [row["type"] for row in only["types"]] == [["t", 2]]


async def test_queue_full(make_daemon: MakeDaemon) -> None:
    from gloomd.cluster.settings import ClusterLimits

    d1 = await make_daemon(limits=ClusterLimits(max_queued=2))
    await d1.engine.submit(1, JobSpec(1, "t", None))
    await d1.engine.submit(1, JobSpec(2, "t", None))
    assert frames(await d1.engine.submit(1, JobSpec(3, "t", None))) == [
        {"error": "queue_full", "reason": 3}
    ]
