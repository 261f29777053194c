"""Daemons that die, and a Redis that goes away and comes back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from gloomd.cluster.errors import BackendUnavailable, BackendUncertain, Fenced
from gloomd.cluster.steps import JobSpec
from tests.cluster.conftest import Daemon, decode
from tests.cluster.redis_server import RedisServer

MakeDaemon = Callable[..., Awaitable[Daemon]]


async def test_a_lapsed_lease_is_reaped_once_with_attempt_plus_one(
    make_daemon: MakeDaemon, redis_server: RedisServer, cluster_name: str
) -> None:
    lease = 0.3
    a = await make_daemon(lease=lease)
    c = await make_daemon(lease=lease)
    b_scope = trio.CancelScope()
    b = await make_daemon(lease=lease, scope=b_scope)
    await a.engine.submit(1, JobSpec("held", "t", "x"))
    await b.engine.submit(2, JobSpec("attached", "u", None))
    await b.engine.submit(2, JobSpec("bg", "u", None, detach=True))
    assert (await b.engine.join(5, "t", 1)).code == "job"
    await a.engine.join(6, "t", 1)
    b_scope.cancel()  # B dies: no goodbye, its lease lapses
    (job,) = await a.mailbox.take(timeout=10)
    frame = decode(job.frame)
    assert (job.peer, frame["id"], frame["attempt"]) == (6, "held", 2)
    # Whoever comes late finds nothing to do: reaped exactly once.
    assert await a.engine.reap(b.engine.daemon) is None
    assert await c.engine.reap(b.engine.daemon) is None
    stats = await c.engine.stats()
    assert stats["totals"]["requeued"] == 1 and stats["totals"]["withdrawn"] == 1
    jobs, _ = await c.engine.jobs("u", by_type=True)
    assert [j["id"] for j in jobs] == ["bg"]  # the detached job outlives its daemon
    assert c.mailbox.items == [] and a.mailbox.items == []
    assert redis_server.cli("EXISTS", f"{{{cluster_name}}}:in:{b.engine.daemon}").strip() == "0"


async def test_a_fenced_daemon_joins_again_under_a_new_id(
    make_daemon: MakeDaemon, redis_server: RedisServer, cluster_name: str
) -> None:
    a = await make_daemon()
    fenced: list[str] = []
    a.engine.on_fenced = lambda: fenced.append(a.engine.daemon)
    old = a.engine.daemon
    redis_server.cli("DEL", f"{{{cluster_name}}}:dm:{old}")  # as if reaped
    with pytest.raises(Fenced):
        await a.engine.submit(1, JobSpec("j", "t", None))
    assert fenced == [a.engine.daemon] and a.engine.daemon != old
    assert (await a.engine.submit(1, JobSpec("j", "t", None))).code == "ok"


async def test_redis_killed_and_restarted_under_load_loses_nothing_acked(
    make_daemon: MakeDaemon, redis_factory: Callable[..., RedisServer]
) -> None:
    server = redis_factory(appendonly=True)  # appendfsync always
    d = await make_daemon(url=server.url, op_timeout=2.0, backoff_max=0.2)
    acked: list[int] = []
    refused: list[int] = []
    uncertain: list[int] = []
    enough = trio.Event()
    done: list[Callable[[], bool]] = [lambda: len(acked) >= 50]

    ids = iter(range(100_000))

    async def submitter() -> None:
        for n in ids:
            try:
                reply = await d.engine.submit(1, JobSpec(n, "t", n, priority=n % 2))
                assert reply.code == "ok"
                acked.append(n)
            except BackendUncertain:
                uncertain.append(n)
            except BackendUnavailable:
                refused.append(n)
                if not done[0]():
                    await d.engine.wait_up()
            if done[0]():
                enough.set()
                return

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submitter)
            await enough.wait()
        server.kill()
        enough = trio.Event()
        done[0] = lambda: len(refused) >= 1  # the first refusal, then Redis comes back
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submitter)
            await enough.wait()
        server.start()  # replays its AOF
        await d.engine.wait_up()
        enough = trio.Event()
        more = len(acked) + 50
        done[0] = lambda: len(acked) >= more
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submitter)
            await enough.wait()
    assert refused and len(acked) >= 100
    held: list[Any] = []
    cursor = None
    while True:
        page, cursor = await d.engine.jobs(limit=1000, cursor=cursor)
        held += [j["id"] for j in page]
        if cursor is None:
            break
    # Every acked job is there, in dispatch order; nothing refused or
    # withdrawn (answer lost) is.
    assert held == sorted(acked, key=lambda n: (-(n % 2), n))
    totals = (await d.engine.stats())["totals"]
    assert totals["submitted"] - totals["withdrawn"] == len(acked)


async def test_a_submit_whose_answer_was_lost_is_withdrawn(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(backoff_max=0.2)
    step = d.engine.submit_step(1, JobSpec("lost", "t", None))
    assert (await d.engine.call(step))[0] == b"ok"
    # As if the connection broke before the answer: the daemon answered
    # backend_unavailable, so once Redis answers again the job is undone.
    d.engine._uncertain([step], d.engine.daemon)
    d.engine._down(ConnectionError("test"))
    with trio.fail_after(10):
        await d.engine.wait_up()
    stats = await d.engine.stats()
    assert stats["types"] == [] and stats["totals"]["withdrawn"] == 1
    # Its token no longer matches anything: withdrawing again does nothing.
    again = step._replace(function="gloomd_1_withdraw", args=(1, step.args[2], step.args[1]))
    assert (await d.engine.call(again))[0] == b"none"


#: A function that keeps Redis busy for `ARGV[1]` ms (a script past the
#: busy threshold: every other client is answered BUSY meanwhile).
_BUSY_SCRIPT = (
    "local s = redis.call('TIME') local t0 = s[1] * 1000000 + s[2] "
    "while true do local t = redis.call('TIME') "
    "if t[1] * 1000000 + t[2] - t0 > tonumber(ARGV[1]) * 1000 then return 1 end end"
)


async def test_a_redis_busy_with_a_long_script_does_not_kill_the_engine(
    make_daemon: MakeDaemon,
    redis_factory: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis answers BUSY to everyone while a long function runs: the
    engine's own calls (lease, inbox, clock) log it and go on; it serves
    once Redis is free."""
    server = redis_factory()
    server.cli("CONFIG", "SET", "busy-reply-threshold", "50")
    daemon = await make_daemon(url=server.url, lease=0.3)
    await trio.to_thread.run_sync(server.cli, "EVAL", _BUSY_SCRIPT, "0", "1500")
    assert any("cluster_refused" in r.getMessage() for r in caplog.records)
    with trio.fail_after(5):
        reply = await daemon.engine.submit(1, JobSpec("after", "t", None))
    assert reply.code == "ok"
