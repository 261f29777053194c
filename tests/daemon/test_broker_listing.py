"""`jobs`, the new stats fields, the per-type counters and the broker's log events,
with no sockets."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from gloomd.counters import BOUNDS, OUTCOMES
from gloomd.listing import SCAN_BUDGET
from tests.support.brokerkit import Kit
from tests.support.logs import fields


def page(k: Kit, master: Any, **keys: Any) -> dict[str, Any]:
    k.out(master)
    (reply,) = k.send(master, {"action": "jobs", **keys})
    assert reply["ok"] is True, reply
    return reply  # type: ignore[no-any-return]


def every(k: Kit, master: Any, **keys: Any) -> list[dict[str, Any]]:
    """Follow the cursor to the end; every row."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        reply = page(k, master, **keys, **({} if cursor is None else {"cursor": cursor}))
        rows += reply["jobs"]
        cursor = reply["next"]
        if cursor is None:
            return rows
    raise AssertionError("the cursor never ended")


def drain_order(k: Kit, master: Any, job_type: Any = "t") -> list[Any]:
    """The order a slave is handed the queued jobs of a type."""
    s = k.slave(job_type, "drainer")
    order = []
    frames = k.out(s)
    while frames:
        order += [f["id"] for f in frames if f.get("action") == "job"]
        frames = k.send(s, {"action": "respond", "body": None})[1:]
    k.broker.disconnect(s)
    k.out(master)
    return order


def test_queued_jobs_are_listed_in_exact_dispatch_order_page_by_page() -> None:
    k = Kit(max_retries=100)
    m = k.master()
    rng = random.Random(7)
    for job_id in range(600):
        k.submit(m, job_id, priority=rng.choice([-1, 0, 0, 3]), delay=rng.choice([0, 0, 0, 2]))
    # Some go to slaves and come back (a requeue keeps its place), some are cancelled.
    slaves = [k.slave("t", f"s{i}") for i in range(5)]
    for s in slaves:
        k.out(s)
    for s in slaves[:3]:
        k.broker.disconnect(s)
    for job_id in range(0, 600, 7):
        k.send(m, {"action": "cancel", "id": job_id})
    k.tick(2)  # the delayed ones become ready, a new seq each
    listed = [row["id"] for row in every(k, m, state="queued", limit=37)]
    assert len(listed) == k.broker.queued_total == len(set(listed))
    for s in slaves[3:]:
        k.broker.disconnect(s)  # the last two held jobs go back too
    listed = [row["id"] for row in every(k, m, state="queued", limit=37)]
    assert listed == drain_order(k, m)


def test_rows_say_state_attempt_age_and_detach() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "run", detach=True)
    k.wall.now += 1.5
    k.submit(m, "wait", after=["run"], job_type="u")
    k.submit(m, "later", delay=5, priority=3)
    k.submit(m, "queued")
    k.wall.now += 1.0
    rows = every(k, m)
    assert rows == [
        {"id": "queued", "type": "t", "priority": 0, "state": "queued", "attempt": 0,
         "age_s": 1.0, "detach": False},
        {"id": "later", "type": "t", "priority": 3, "state": "delayed", "attempt": 0,
         "age_s": 1.0, "detach": False},
        {"id": "wait", "type": "u", "priority": 0, "state": "waiting", "attempt": 0,
         "age_s": 1.0, "detach": False},
        {"id": "run", "type": "t", "priority": 0, "state": "running", "attempt": 1,
         "age_s": 2.5, "detach": True},
    ]  # fmt: skip
    assert [r["id"] for r in every(k, m, type="u")] == ["wait"]
    assert [r["id"] for r in every(k, m, type="t", state="running")] == ["run"]
    assert every(k, m, type="nobody") == []
    k.out(s)


def test_limit_caps_a_page_and_next_is_null_only_at_the_end() -> None:
    k = Kit()
    m = k.master()
    for job_id in range(2500):
        k.submit(m, job_id)
    first = page(k, m)
    assert len(first["jobs"]) == 100 and first["next"] is not None  # the default limit
    big = page(k, m, limit=1000)
    assert len(big["jobs"]) == 1000
    rows = every(k, m, limit=1000)
    assert [r["id"] for r in rows] == list(range(2500))
    last = page(k, m, limit=1000, cursor=page(k, m, limit=1000, cursor=big["next"])["next"])
    assert len(last["jobs"]) == 500 and last["next"] is None


def test_a_page_examines_a_bounded_number_of_entries() -> None:
    """Cancelled jobs leave stale entries; a page skips at most SCAN_BUDGET of
    them and answers what it has, with a cursor to go on from."""
    k = Kit()
    m = k.master()
    total = 3 * SCAN_BUDGET
    for job_id in range(total):
        k.submit(m, job_id)
    k.submit(m, "last")
    # Cancelled from the front: compaction keeps up to about as many stale
    # entries as live ones, so keep many live ones and check the bound holds.
    for job_id in range(total // 2):
        k.send(m, {"action": "cancel", "id": job_id})
    rows = every(k, m, limit=10)
    assert [r["id"] for r in rows] == [*range(total // 2, total), "last"]
    reply = page(k, m, limit=1)
    assert len(reply["jobs"]) <= 1 and reply["next"] is not None


def test_a_cursor_survives_jobs_coming_and_going() -> None:
    k = Kit()
    m = k.master()
    for job_id in range(10):
        k.submit(m, job_id)
    first = page(k, m, limit=4)
    assert [r["id"] for r in first["jobs"]] == [0, 1, 2, 3]
    k.send(m, {"action": "cancel", "id": 4})
    k.submit(m, 10)
    k.submit(m, "urgent", priority=9)  # ahead of the cursor: not on the pages after it
    rest = every(k, m, cursor=first["next"])
    assert [r["id"] for r in rest] == [5, 6, 7, 8, 9, 10]


def test_dead_jobs_page_across_types_in_the_order_they_died() -> None:
    k = Kit()
    m = k.master()
    for job_type in ("a", "b"):
        s = k.slave(job_type, f"s-{job_type}")
        for n in range(3):
            k.submit(m, f"{job_type}{n}", job_type=job_type, detach=True)
            k.out(s)
            k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    assert [r["id"] for r in every(k, m, state="dead", limit=2)] == [
        "a0", "a1", "a2", "b0", "b1", "b2",
    ]  # fmt: skip
    assert [r["id"] for r in every(k, m, state="dead", type="b")] == ["b0", "b1", "b2"]


# ------------------------------------------------------------------ stats and counters


def test_totals_add_up_and_types_count_their_ends() -> None:
    """Issue 17: submitted = completed + failed + cancelled + withdrawn + live."""
    k = Kit()
    m = k.master()
    leaving = k.master("leaving")
    s = k.slave("t")
    k.submit(m, "ok")
    k.send(s, {"action": "respond", "body": 1})
    k.submit(m, "err", retries=1)
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})  # retried once
    k.tick(1)
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.submit(m, "gone", job_type="q")
    k.send(m, {"action": "cancel", "id": "gone"})
    k.submit(leaving, "w1", job_type="q")
    k.submit(leaving, "w2", job_type="q", after=["w1"])  # goes with w1: withdrawn too
    k.broker.disconnect(leaving)
    k.submit(m, "dead", detach=True)
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.submit(m, "live", delay=60)
    k.out(m)
    (reply,) = k.send(m, {"action": "stats"})
    totals = reply["stats"]["totals"]
    assert totals == {
        "submitted": 7, "completed": 1, "failed": 2, "requeued": 0, "cancelled": 1,
        "retried": 1, "dead": 1, "withdrawn": 2,
    }  # fmt: skip
    live = k.broker.live_jobs()
    assert live == 1
    assert totals["submitted"] == (
        totals["completed"] + totals["failed"] + totals["cancelled"] + totals["withdrawn"] + live
    )
    (row,) = reply["stats"]["types"]
    assert (row["completed"], row["failed"], row["dead"], row["delayed"]) == (1, 2, 1, 1)


def test_counters_outlive_the_queue_and_are_capped() -> None:
    k = Kit(metrics_max_types=2)
    m = k.master()
    for job_type in ("a", "b", "c", "d"):
        s = k.slave(job_type, job_type)
        k.submit(m, job_type, job_type=job_type)
        k.send(s, {"action": "respond", "body": None})
        k.broker.disconnect(s)
    assert k.broker.types == {}
    tallies = k.broker.tallies
    assert list(tallies.by_key) == ["a", "b"]
    assert tallies.by_key["a"].completed == 1 and tallies.other.completed == 2
    k.submit(m, "again", job_type="a")
    k.submit(m, "later", job_type="c")
    (reply,) = k.send(m, {"action": "stats"})
    rows = {row["type"]: row for row in reply["stats"]["types"]}
    assert rows["a"]["completed"] == 1 and rows["a"]["failed"] == 0
    assert rows["c"]["completed"] is None  # past the cap: counted with the others only
    assert tallies.by_key["a"].submitted == 2


def test_wait_and_run_histograms_follow_the_clock() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, "j")
    k.tick(0.3)
    s = k.slave("t")  # waited 0.3 s
    k.tick(2.0)
    k.send(s, {"action": "respond", "body": None})  # ran 2 s
    k.submit(m, "direct")  # an idle slave: waited 0 s
    k.tick(0.004)
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})  # ran 4 ms
    tally = k.broker.tallies.by_key["t"]
    bucket = dict(zip((*BOUNDS, float("inf")), tally.wait_counts, strict=True))
    assert bucket[0.001] == 1 and bucket[0.5] == 1 and sum(tally.wait_counts) == 2
    assert tally.wait_sum == pytest.approx(0.3)
    run = dict(zip((*BOUNDS, float("inf")), tally.run_counts, strict=True))
    assert run[2.5] == 1 and run[0.005] == 1 and tally.run_sum == pytest.approx(2.004)
    assert dict(zip(OUTCOMES, tally.finished, strict=True)) == {
        "ok": 1, "error": 1, "timeout": 0, "crash": 0, "cancelled": 0, "halted": 0,
        "dependency": 0,
    }  # fmt: skip


# ------------------------------------------------------------------ log lines


def test_job_events_carry_the_type(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gloomd")
    k = Kit(max_retries=0)
    m = k.master()
    s = k.slave(["list", "type"])
    k.submit(m, 1, job_type=["list", "type"], retries=1)
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.tick(1)
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.submit(m, 2, job_type=["list", "type"])
    k.broker.disconnect(s)
    events = {r.msg: fields(r) for r in caplog.records if hasattr(r, "gloom_fields")}
    for name in ("submit", "retry", "failure", "join"):
        assert events[name]["type"] == ["list", "type"], name
    assert events["failure"]["category"] == "CRASH"  # the last failure: job 2's slave lost


def test_a_waiting_master_cannot_pile_up_requests() -> None:
    """What a master sends while its kick runs is held, and weighed against
    the output cap as unread output is."""
    k = Kit()
    k.broker._max_outbox = 10_000
    m = k.master()
    s = k.slave("t")
    for job_id in range(1100):
        k.submit(m, job_id, detach=True)
        k.out(s)
        k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.out(m)
    k.send(m, {"action": "kick", "type": "t"})
    assert m.held == [] and not m.overflowed
    for _ in range(400):  # 19 bytes each: 7,600 held, under the cap
        k.deliver(m, {"action": "stats"})
    assert not m.overflowed and len(m.held) == 400
    for _ in range(200):
        k.deliver(m, {"action": "stats"})
    assert m.overflowed  # dropped at the next flush, as a master that does not read
