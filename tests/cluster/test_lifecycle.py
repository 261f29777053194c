"""Section 2 of durability-and-operations.md and lifecycle.md, cluster-wide."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from gloomd.cluster.settings import ClusterLimits
from gloomd.cluster.steps import JobSpec, Reply
from tests.cluster.conftest import Daemon, decode

MakeDaemon = Callable[..., Awaitable[Daemon]]


def frames(reply: Reply) -> list[Any]:
    return [decode(f) for f in reply.frames]


def failed(job_id: Any, category: str, attempt: int | None, **extra: Any) -> dict[str, Any]:
    """A job_failed frame; `attempt` None for a job submitted without
    `retries` (its failure frames carry none, as the embedded broker's)."""
    frame = {"error": "job_failed", "reason": job_id, "id": job_id, "category": category}
    frame.update(extra)
    if attempt is not None:
        frame["attempt"] = attempt
    return frame


async def test_detached_results_are_read_from_another_daemon(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("bg", "t", None, detach=True))
    await d1.engine.master_gone(1)  # a detached job outlives its master
    assert frames(await d2.engine.result(5, "bg")) == [{"error": "not_ready", "reason": "bg"}]
    assert frames(await d2.engine.result(5, "nope")) == [{"error": "unknown_id", "reason": "nope"}]
    await d2.engine.join(2, "t", 1)
    await d2.engine.respond(2, {"r": 1})
    for _ in range(2):  # kept, and read as often as asked
        assert frames(await d2.engine.result(5, "bg")) == [{"id": "bg", "body": {"r": 1}}]
    assert d1.mailbox.items == []  # its master had left: nobody told


async def test_results_expire_and_are_capped(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon(limits=ClusterLimits(result_ttl=0.3, max_results=2))
    await d1.engine.join(2, "t", 1)
    for n in range(3):
        await d1.engine.submit(1, JobSpec(n, "t", n, detach=True))
        await d1.mailbox.take(1 if n == 0 else 0)
        await d1.engine.respond(2, n)
    await d1.mailbox.take(3)  # the results, to their master
    assert frames(await d1.engine.result(1, 0)) == [{"error": "unknown_id", "reason": 0}]
    assert frames(await d1.engine.result(1, 2)) == [{"id": 2, "body": 2}]
    with trio.fail_after(5):
        while (await d1.engine.result(1, 2)).frames[0][4:] != b'{"error":"unknown_id","reason":2}':
            await d1.engine.tick()


async def test_after_waits_releases_in_queue_order_and_fails_dependents(
    make_daemon: MakeDaemon,
) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("dep", "t", None))
    await d2.engine.submit(2, JobSpec("low", "t", None, after=("dep",)))
    await d2.engine.submit(2, JobSpec("high", "t", None, priority=5, after=("dep", "dep")))
    await d1.engine.submit(1, JobSpec("bad", "t", None))
    await d2.engine.submit(2, JobSpec("doomed", "t", None, after=("bad",)))
    await d2.engine.submit(2, JobSpec("chain", "t", None, after=("doomed",)))
    stats = (await d1.engine.stats())["types"][0]
    assert (stats["queued"], stats["waiting"]) == (2, 4)
    assert frames(await d1.engine.submit(1, JobSpec("x", "t", None, after=("x",)))) == [
        {"error": "dependency_cycle", "reason": "x"}
    ]
    assert frames(await d1.engine.submit(1, JobSpec("x", "t", None, after=("zz",)))) == [
        {"error": "unknown_dependency", "reason": "zz"}
    ]
    reply = await d1.engine.join(3, "t", 1)
    assert decode(reply.frames[1])["id"] == "dep"
    reply = await d1.engine.respond(3, None)
    assert [decode(reply.frames[1])["id"]] == ["high"]  # released: high before low
    reply = await d1.engine.respond(3, None)
    assert decode(reply.frames[1])["id"] == "bad"
    reply = await d1.engine.fail(3, "ERROR", "no")
    assert decode(reply.frames[1])["id"] == "low"
    assert await d2.mailbox.frames(3) == [
        (2, {"id": "high", "body": None}),
        (2, failed("doomed", "DEPENDENCY", None, dependency="bad")),
        (2, failed("chain", "DEPENDENCY", None, dependency="doomed")),
    ]
    # A failed outcome is remembered: a later `after` on it fails at once.
    reply = await d1.engine.submit(1, JobSpec("late", "t", None, after=("bad",)))
    assert frames(reply) == [{"ok": True, "id": "late"}]
    assert await d1.mailbox.frames(2) == [
        (1, {"id": "dep", "body": None}),
        (1, {"error": "job_error", "reason": "no", "id": "bad", "category": "ERROR"}),
    ]
    assert await d1.mailbox.frames() == [(1, failed("late", "DEPENDENCY", None, dependency="bad"))]


async def test_delay_and_retries_with_back_off(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon()
    await d1.engine.join(2, "t", 1)
    start = trio.current_time()
    await d1.engine.submit(1, JobSpec("r", "t", None, delay=0.2, retries=2, backoff=0.1))
    assert (await d1.engine.jobs(state="delayed"))[0][0]["id"] == "r"
    (job,) = await d1.mailbox.take()
    assert trio.current_time() - start >= 0.19
    assert "attempt" not in decode(job.frame)
    waits = []
    for attempt in (2, 3):
        before = trio.current_time()
        assert (await d1.engine.fail(2, "TIMEOUT" if attempt == 2 else "ERROR", "x")).code == "ok"
        (job,) = await d1.mailbox.take()
        waits.append(trio.current_time() - before)
        assert decode(job.frame)["attempt"] == attempt
    assert waits[0] >= 0.09 and waits[1] >= 0.19  # 0.1 x 2^(k-1)
    await d1.engine.fail(2, "ERROR", "last")
    assert await d1.mailbox.frames() == [
        (1, {"error": "job_error", "reason": "last", "id": "r", "category": "ERROR", "attempt": 3})
    ]
    assert (await d1.engine.stats())["totals"]["retried"] == 2


async def test_dead_letters_kick_delete_and_max_dead(make_daemon: MakeDaemon) -> None:
    limits = ClusterLimits(max_dead=2)  # cluster-wide: the last daemon started sets it
    d1, d2 = await make_daemon(limits=limits), await make_daemon(limits=limits)
    await d1.engine.join(2, "t", 1)
    for n in range(3):
        await d1.engine.submit(1, JobSpec(f"d{n}", "t", None, detach=True))
    await d1.mailbox.take()  # d0 runs
    assert (await d1.engine.fail(2, "ERROR", "e")).code == "job"  # d1 runs
    dead = {"error": "job_error", "reason": "e", "id": "d0", "category": "ERROR"}
    assert await d1.mailbox.frames() == [(1, dead)]
    # Dead: kept past its master, its failure answers `result`, the id stays taken.
    await d1.engine.master_gone(1)
    assert frames(await d2.engine.result(7, "d0")) == [dead]
    assert frames(await d2.engine.submit(7, JobSpec("d0", "t", None))) == [
        {"error": "id_exists", "reason": "d0"}
    ]
    reply = await d2.engine.submit(7, JobSpec("d0", "t", None, unique=True))
    assert frames(reply) == [{"ok": True, "id": "d0", "attached": True}, dead]
    assert frames(await d2.engine.kick("d2")) == [{"error": "invalid_state", "reason": "queued"}]
    assert frames(await d2.engine.kick("zz")) == [{"error": "unknown_id", "reason": "zz"}]
    # Two more die; past --max-dead the oldest (d0) is dropped.
    assert (await d1.engine.fail(2, "ERROR", "e")).dropped == ()
    assert (await d1.engine.fail(2, "TIMEOUT", "e")).dropped == ("d0",)
    jobs, cursor = await d2.engine.jobs(state="dead")
    assert [j["id"] for j in jobs] == ["d1", "d2"] and cursor is None
    assert frames(await d2.engine.result(7, "d0")) == [{"error": "unknown_id", "reason": "d0"}]
    # Kick: queued again (here: straight to the idle slave), attempt count kept.
    assert frames(await d2.engine.kick("d1")) == [{"ok": True, "id": "d1"}]
    (job,) = await d1.mailbox.take()
    assert decode(job.frame)["attempt"] == 2
    assert frames(await d2.engine.delete(7, "d1")) == [
        {"error": "invalid_state", "reason": "running"}
    ]
    assert frames(await d2.engine.delete(7, "d2")) == [{"ok": True, "id": "d2"}]
    assert frames(await d2.engine.result(7, "d2")) == [{"error": "unknown_id", "reason": "d2"}]
    stats = await d1.engine.stats()
    assert stats["types"][0]["dead"] == 0 and stats["totals"]["dead"] == 3


async def test_kick_by_type(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon()
    for n in range(5):
        await d1.engine.submit(1, JobSpec(n, "t", None, detach=True))
    await d1.engine.join(2, "t", 1)
    for _ in range(5):
        await d1.engine.fail(2, "CRASH", None)
    await d1.engine.slave_gone(2)
    assert (await d1.engine.stats())["types"][0]["dead"] == 5
    assert await d1.engine.kick_type("t", 2) == 2
    jobs, _ = await d1.engine.jobs(state="queued")
    assert [j["id"] for j in jobs] == [0, 1]
    assert await d1.engine.kick_type("t") == 3
    assert await d1.engine.kick_type("t") == 0


async def test_jobs_pages_in_dispatch_order(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    expected = []
    for n in range(25):
        await (d1 if n % 2 else d2).engine.submit(1, JobSpec(n, "a", None, priority=n % 3))
    await d1.engine.submit(1, JobSpec("other", ["b"], None, delay=60))
    expected = sorted(range(25), key=lambda n: (-(n % 3), n))
    seen: list[Any] = []
    cursor = None
    while True:
        page, cursor = await d1.engine.jobs("a", limit=10, cursor=cursor, by_type=True)
        seen += [j["id"] for j in page]
        if cursor is None:
            break
    assert seen == expected
    everything, _ = await d2.engine.jobs(limit=1000)
    assert [j["id"] for j in everything] == [*expected, "other"]
    assert everything[-1]["state"] == "delayed" and everything[-1]["type"] == ["b"]
    one = everything[0]
    assert (one["priority"], one["attempt"], one["detach"]) == (2, 0, False)


async def test_pause_and_resume(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    assert frames(await d1.engine.pause("t")) == [{"ok": True}]
    await d2.engine.join(1, "t", 1)
    await d2.engine.join(2, "t", 1)
    for n in range(3):
        await d1.engine.submit(1, JobSpec(n, "t", None, priority=n))
    row = (await d2.engine.stats())["types"][0]
    assert (row["queued"], row["idle"], row["paused"]) == (3, 2, True)
    assert frames(await d2.engine.resume("t")) == [{"ok": True}]
    got = [(d.peer, decode(d.frame)["id"]) for d in await d2.mailbox.take(2)]
    assert got == [(1, 2), (2, 1)]  # the best jobs to the longest idle


async def test_unique_attaches_masters_across_daemons(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("u", "t", None, unique=True))
    reply = await d2.engine.submit(2, JobSpec("u", "t", None, unique=True))
    assert frames(reply) == [{"ok": True, "id": "u", "attached": True}]
    assert frames(await d2.engine.submit(2, JobSpec("u", "other", None, unique=True))) == [
        {"error": "id_exists", "reason": "u"}
    ]
    # The first master leaving does not remove it: another still waits.
    await d1.engine.master_gone(1)
    assert (await d1.engine.stats())["types"][0]["queued"] == 1
    await d1.engine.join(3, "t", 1)
    await d1.engine.progress(3, 1)
    await d1.engine.respond(3, "r")
    assert await d2.mailbox.frames(2) == [
        (2, {"id": "u", "progress": 1}),
        (2, {"id": "u", "body": "r"}),
    ]
    # Detached and finished: attach answers with the kept result at once.
    await d1.engine.submit(4, JobSpec("v", "t", None, detach=True))
    await d1.mailbox.take()
    await d1.engine.respond(3, "rv")
    reply = await d2.engine.submit(2, JobSpec("v", "t", None, unique=True))
    assert frames(reply) == [{"ok": True, "id": "v", "attached": True}, {"id": "v", "body": "rv"}]


async def test_cancel_by_one_master_tells_the_others(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("u", "t", None, unique=True))
    await d2.engine.submit(2, JobSpec("u", "t", None, unique=True))
    assert frames(await d2.engine.cancel(2, "u")) == [{"ok": True, "id": "u"}]
    assert await d1.mailbox.frames() == [(1, failed("u", "CANCELLED", None))]
    assert d2.mailbox.items == []


async def test_delay_and_after_together(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon()
    await d1.engine.submit(1, JobSpec("dep", "t", None))
    await d1.engine.submit(1, JobSpec("both", "t", None, delay=0.3, after=("dep",)))
    reply = await d1.engine.join(2, "t", 1)
    start = trio.current_time()
    assert decode(reply.frames[1])["id"] == "dep"
    assert (await d1.engine.respond(2, None)).code == "ok"  # "both" is not ready yet
    jobs, _ = await d1.engine.jobs()
    assert [(j["id"], j["state"]) for j in jobs] == [("both", "delayed")]
    deliveries = await d1.mailbox.take(2)
    assert decode(deliveries[1].frame)["id"] == "both"
    assert trio.current_time() - start >= 0.25


async def test_a_daemon_timeout_retries_on_another_slave(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon()
    await d1.engine.join(1, "t", 1)
    await d1.engine.join(2, "t", 1)
    spec = JobSpec("tr", "t", None, timeout=0.2, retries=1, backoff=0.05)
    await d1.engine.submit(9, spec)
    (first,) = await d1.mailbox.take()
    assert first.peer == 1
    (second,) = await d1.mailbox.take()  # timed out, backed off, to the free slave
    assert second.peer == 2 and decode(second.frame)["attempt"] == 2
    assert frames(await d1.engine.respond(1, "late")) == [{"ok": True}]  # dropped
    await d1.engine.respond(2, "r")
    assert await d1.mailbox.frames() == [(9, {"id": "tr", "body": "r"})]
    assert (await d1.engine.stats())["totals"]["retried"] == 1


async def test_outcomes_expire_and_are_capped(make_daemon: MakeDaemon) -> None:
    d1 = await make_daemon(limits=ClusterLimits(max_results=1, result_ttl=3600))
    reply = None
    await d1.engine.join(2, "t", 1)
    for job_id in ("one", "two"):
        await d1.engine.submit(1, JobSpec(job_id, "t", None))
        await d1.mailbox.take()
        reply = await d1.engine.respond(2, None)
    assert reply is not None
    await d1.mailbox.take(2)
    await d1.engine.tick()  # the cap: the older outcome goes
    assert frames(await d1.engine.submit(1, JobSpec("x", "t", None, after=("one",)))) == [
        {"error": "unknown_dependency", "reason": "one"}
    ]
    assert (await d1.engine.submit(1, JobSpec("x", "t", None, after=("two",)))).code == "ok"


async def test_delete_of_an_attached_job_is_its_masters_cancel(make_daemon: MakeDaemon) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d1.engine.submit(1, JobSpec("a", "t", None))
    assert frames(await d2.engine.delete(2, "a")) == [{"error": "unknown_id", "reason": "a"}]
    assert frames(await d1.engine.delete(1, "a")) == [{"ok": True, "id": "a"}]
    assert (await d1.engine.stats())["totals"]["cancelled"] == 1


async def test_halt_leaves_the_cluster_and_keeps_what_is_not_its_own(
    make_daemon: MakeDaemon,
) -> None:
    d1, d2 = await make_daemon(), await make_daemon()
    await d2.engine.submit(5, JobSpec("theirs", "t", None))
    assert (await d1.engine.join(1, "t", 1)).code == "job"  # d1's slave holds "theirs"
    await d1.engine.submit(3, JobSpec("mine", "t", None))
    await d1.engine.submit(3, JobSpec("bg", "t", None, detach=True))
    halted = await d1.engine.halt()
    assert [(m, decode(f)) for m, f in halted] == [(3, failed("mine", "HALTED", None))]
    reply = await d2.engine.join(7, "t", 1)
    job = decode(reply.frames[1])
    # Back in its place without a loss; the redelivery says attempt 2.
    assert (job["id"], job["attempt"]) == ("theirs", 2)
    jobs, _ = await d2.engine.jobs()
    assert [j["id"] for j in jobs] == ["bg", "theirs"]
    stats = await d2.engine.stats()
    # "mine" ended HALTED: a failure, as the embedded broker's halt counts it.
    totals = stats["totals"]
    assert (totals["requeued"], totals["failed"], totals["withdrawn"]) == (0, 1, 0)
