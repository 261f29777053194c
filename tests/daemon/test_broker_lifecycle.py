"""The job lifecycle's rules, one by one, with no sockets (durability-and-operations.md
section 2 and its fine print, notes/lifecycle.md): delay, retries and back-off,
unique attach, dead letters, kick, delete, pause and resume, and every error
they answer.  `jobs`, stats and counters are in test_broker_listing.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gloomd.broker import KICK_CHUNK
from tests.support.brokerkit import Kit
from tests.support.logs import fields


def job_frame(
    job_id: Any, body: Any = None, job_type: Any = "t", attempt: int = 1
) -> dict[str, Any]:
    frame = {"action": "job", "id": job_id, "type": job_type, "body": body}
    if attempt > 1:
        frame["attempt"] = attempt
    return frame


def failed(job_id: Any, category: str, **extra: Any) -> dict[str, Any]:
    return {"error": "job_failed", "reason": job_id, "id": job_id, "category": category, **extra}


def ids(frames: list[Any]) -> list[Any]:
    return [f["id"] for f in frames if f.get("action") == "job"]


def respond(k: Kit, slave: Any, body: Any = None) -> list[Any]:
    return k.send(slave, {"action": "respond", "body": body})


def fail(k: Kit, slave: Any, category: str = "ERROR", reason: Any = "boom") -> list[Any]:
    return k.send(slave, {"action": "fail", "error": category, "reason": reason})


def stats_row(k: Kit, master: Any, job_type: Any = "t") -> dict[str, Any]:
    """One type's stats row (what the master had waiting is read and dropped first)."""
    k.out(master)
    (reply,) = k.send(master, {"action": "stats", "type": job_type})
    (row,) = reply["stats"]["types"]
    return row  # type: ignore[no-any-return]


def listed(k: Kit, master: Any, **keys: Any) -> list[tuple[Any, str]]:
    """(id, state) of each job of one page (what the master had waiting is dropped first)."""
    k.out(master)
    (reply,) = k.send(master, {"action": "jobs", **keys})
    assert reply["ok"] is True, reply
    return [(row["id"], row["state"]) for row in reply["jobs"]]


# ------------------------------------------------------------------ validation


SUBMIT = {"action": "submit", "id": 1, "type": "t", "body": None}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        # The existing checks come first...
        ({"detach": "yes", "delay": -1}, "detach"),
        ({"after": "x", "retries": -1}, "after"),
        ({"timeout": 0, "unique": 1}, "timeout"),
        # ...then delay, retries, backoff, unique, in that order.
        ({"delay": -1, "retries": -1, "backoff": 0, "unique": 1}, "delay"),
        ({"retries": -1, "backoff": 0, "unique": 1}, "retries"),
        ({"backoff": 0, "unique": 1}, "backoff"),
        ({"unique": 1}, "unique"),
    ],
)
def test_submit_check_order(extra: dict[str, Any], reason: str) -> None:
    k = Kit()
    m = k.master()
    assert k.send(m, {**SUBMIT, **extra}) == [{"error": "invalid_type", "reason": reason}]
    assert k.broker.jobs == {} and k.broker.totals["submitted"] == 0


@pytest.mark.parametrize(
    ("key", "bad", "good"),
    [
        (
            "delay",
            [-1, -0.5, "5", True, None and 0, 365 * 24 * 3600 + 1, [1]],
            [0, 0.0, 2.5, 31536000],
        ),
        ("retries", [-1, 1.5, 1001, True, "2", 10**400], [0, 1, 1000]),
        ("backoff", [0, -1, 3600.5, "1", False], [0.001, 1, 3600]),
        ("unique", [1, "true", None and 0, [True]], [True, False]),
    ],
)
def test_lifecycle_submit_ranges(key: str, bad: list[Any], good: list[Any]) -> None:
    k = Kit()
    m = k.master()
    for value in bad:
        if value is None:
            continue
        reply = k.send(m, {**SUBMIT, key: value})
        assert reply == [{"error": "invalid_type", "reason": key}], (key, value)
    for job_id, value in enumerate(good):
        reply = k.send(m, {**SUBMIT, "id": job_id, key: value, "detach": True})
        assert reply[0] == {"ok": True, "id": job_id}, (key, value)


@pytest.mark.parametrize(
    ("frame", "reply"),
    [
        ({"action": "kick"}, ("missing_field", "id")),
        ({"action": "kick", "id": 1.5}, ("invalid_type", "id")),
        ({"action": "kick", "type": "t" * 1025}, ("invalid_type", "type")),
        ({"action": "kick", "type": "t", "limit": 0}, ("invalid_type", "limit")),
        ({"action": "kick", "type": "t", "limit": -3}, ("invalid_type", "limit")),
        ({"action": "kick", "type": "t", "limit": 1.5}, ("invalid_type", "limit")),
        ({"action": "kick", "type": "t", "limit": True}, ("invalid_type", "limit")),
        ({"action": "kick", "type": "t", "limit": 2**70}, ("invalid_type", "limit")),
        ({"action": "delete"}, ("missing_field", "id")),
        ({"action": "delete", "id": [1]}, ("invalid_type", "id")),
        ({"action": "pause"}, ("missing_field", "type")),
        ({"action": "resume"}, ("missing_field", "type")),
        ({"action": "jobs", "type": "t" * 1025}, ("invalid_type", "type")),
        ({"action": "jobs", "state": "gone"}, ("invalid_type", "state")),
        ({"action": "jobs", "state": 1}, ("invalid_type", "state")),
        ({"action": "jobs", "limit": 0}, ("invalid_type", "limit")),
        ({"action": "jobs", "limit": 1001}, ("invalid_type", "limit")),
        ({"action": "jobs", "limit": "5"}, ("invalid_type", "limit")),
        ({"action": "jobs", "cursor": "c"}, ("invalid_type", "cursor")),
        ({"action": "jobs", "cursor": [1, True, 0, 0]}, ("invalid_type", "cursor")),
        ({"action": "jobs", "cursor": [2**64, 0, 0, 0]}, ("invalid_type", "cursor")),
        # Shaped like a cursor, but not one of this listing's (a state filter differs).
        ({"action": "jobs", "state": "dead", "cursor": [0, 0, 0, 0]}, ("invalid_type", "cursor")),
        ({"action": "jobs", "cursor": [9, 0, 0, 0]}, ("invalid_type", "cursor")),
        ({"action": "jobs", "cursor": [0, 0]}, ("invalid_type", "cursor")),
        # Fields in order: type, state, limit, cursor.
        ({"action": "jobs", "state": "x", "limit": 0, "cursor": 1}, ("invalid_type", "state")),
        ({"action": "jobs", "limit": 0, "cursor": 1}, ("invalid_type", "limit")),
    ],
)
def test_lifecycle_action_errors(frame: dict[str, Any], reply: tuple[str, Any]) -> None:
    k = Kit()
    m = k.master()
    assert k.send(m, frame) == [{"error": reply[0], "reason": reply[1]}]


@pytest.mark.parametrize("action", ["kick", "delete", "jobs", "pause", "resume"])
def test_lifecycle_actions_on_the_slave_port(action: str) -> None:
    k = Kit()
    s = k.slave("t")
    reply = k.send(s, {"action": action, "id": 1, "type": "t"})
    assert reply == [{"error": "invalid_action", "reason": "not_a_master"}]


def test_limits_at_their_bounds_are_accepted() -> None:
    k = Kit()
    m = k.master()
    assert k.send(m, {"action": "jobs", "limit": 1000}) == [{"ok": True, "jobs": [], "next": None}]
    assert k.send(m, {"action": "kick", "type": "t", "limit": 2**62}) == [{"ok": True, "kicked": 0}]


# ------------------------------------------------------------------ delay


def test_delayed_job_is_acked_now_and_delivered_at_its_time() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    assert k.submit(m, "d", delay=10) == [{"ok": True, "id": "d"}]
    assert k.out(s) == []
    assert stats_row(k, m)["delayed"] == 1 and listed(k, m) == [("d", "delayed")]
    k.tick(9.999)
    assert k.out(s) == []
    k.tick(0.001)
    assert k.out(s) == [job_frame("d")]
    assert stats_row(k, m)["delayed"] == 0
    respond(k, s, 5)
    assert k.out(m) == [{"id": "d", "body": 5}]


def test_a_delayed_job_queues_by_the_moment_it_became_ready() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, "late", delay=5)
    k.tick(1)
    k.submit(m, "early")
    k.tick(5)  # "late" is ready at 5: after "early", before "after"
    k.submit(m, "after")
    s = k.slave("t")
    got = ids(k.out(s))
    for _ in range(2):
        got += ids(respond(k, s))
    assert got == ["early", "late", "after"]


def test_delay_zero_is_a_plain_submit() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "z", delay=0)
    assert k.out(s) == [job_frame("z")]


def test_delay_and_after_queue_once_both_hold() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "gate")
    assert ids(k.out(s)) == ["gate"]
    # The delay ends first: still waiting on its `after`.
    k.submit(m, "a", delay=2, after=["gate"])
    # The `after` ends first: then delayed until its delay is over.
    k.submit(m, "b", delay=20, after=["gate"])
    assert sorted(listed(k, m, state="waiting")) == [("a", "waiting"), ("b", "waiting")]
    k.tick(3)
    assert k.out(s) == [] and listed(k, m, state="waiting") == [("a", "waiting"), ("b", "waiting")]
    assert respond(k, s) == [{"ok": True}, job_frame("a")]
    assert listed(k, m, state="delayed") == [("b", "delayed")]
    respond(k, s)
    k.tick(16.9)
    assert k.out(s) == []
    k.tick(0.2)
    assert k.out(s) == [job_frame("b")]


def test_cancel_and_delete_work_on_delayed_jobs() -> None:
    k = Kit()
    m = k.master()
    other = k.master("other")
    s = k.slave("t")
    k.submit(m, "c", delay=5)
    k.submit(m, "d", delay=5, detach=True)
    k.out(m)
    assert k.send(m, {"action": "cancel", "id": "c"}) == [{"ok": True, "id": "c"}]
    assert k.send(other, {"action": "delete", "id": "d"}) == [{"ok": True, "id": "d"}]
    assert k.out(m) == [failed("d", "CANCELLED")]  # its submitter hears it went
    assert k.broker.delayed_total == 0 and k.broker.queued_total == 0
    k.tick(10)
    assert k.out(s) == [] and k.broker.jobs == {}


def test_delayed_jobs_count_toward_the_queue_cap() -> None:
    k = Kit(max_queued=2)
    m = k.master()
    k.submit(m, 1, delay=5)
    k.submit(m, 2)
    assert k.submit(m, 3, delay=1) == [{"error": "queue_full", "reason": 3}]


# ------------------------------------------------------------------ retries


def test_retries_with_backoff_then_the_final_failure_says_attempt() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "r", retries=2, backoff=1.5)
    assert k.out(s) == [job_frame("r")]
    assert fail(k, s) == [{"ok": True}]  # first retry after 1.5 s
    assert k.out(m)[1:] == [] and listed(k, m) == [("r", "delayed")]
    k.tick(1.4)
    assert k.out(s) == []
    k.tick(0.1)
    assert k.out(s) == [job_frame("r", attempt=2)]
    fail(k, s, "TIMEOUT")  # second retry after 3 s
    k.tick(2.9)
    assert k.out(s) == []
    k.tick(0.1)
    assert k.out(s) == [job_frame("r", attempt=3)]
    fail(k, s, "ERROR", {"why": "again"})
    assert k.out(m) == [
        {"error": "job_error", "reason": {"why": "again"}, "id": "r", "category": "ERROR",
         "attempt": 3}
    ]  # fmt: skip
    totals = k.broker.totals
    assert (totals["retried"], totals["failed"], totals["submitted"]) == (2, 1, 1)


def test_a_retry_succeeding_answers_the_result_only() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "r", retries=5)
    k.out(m)
    for attempt in (1, 2):
        assert k.out(s) == [job_frame("r", attempt=attempt)]
        fail(k, s)
        k.tick(2.0**attempt)
    assert k.out(s) == [job_frame("r", attempt=3)]
    respond(k, s, "fine")
    assert k.out(m) == [{"id": "r", "body": "fine"}]


def test_backoff_doubles_up_to_an_hour() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "r", retries=4, backoff=1000)
    for wait in (1000, 2000, 3600, 3600):
        k.out(s)
        fail(k, s)
        k.tick(wait - 0.5)
        assert k.out(s) == [], wait
        k.tick(0.5)
        assert ids(k.out(s)) == ["r"], wait


@pytest.mark.parametrize("category", ["CRASH", "HALTED"])
def test_crash_and_halted_from_a_slave_are_not_retried(category: str) -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "r", retries=3)
    k.out(s)
    k.out(m)
    fail(k, s, category)
    assert k.out(m) == [
        {"error": "job_error", "reason": "boom", "id": "r", "category": category, "attempt": 1}
    ]
    assert k.broker.totals["retried"] == 0


def test_the_daemons_timeout_is_retried_and_the_late_answer_dropped() -> None:
    k = Kit()
    m = k.master()
    slow = k.slave("t", "slow")
    k.submit(m, "r", timeout=2, retries=1, backoff=1)
    k.out(m)
    assert k.out(slow) == [{**job_frame("r"), "timeout": 2}]
    k.tick(2)  # timed out: retried in 1 s, the master hears nothing
    assert k.out(m) == []
    quick = k.slave("t", "quick")
    k.tick(1)
    assert k.out(quick) == [{**job_frame("r", attempt=2), "timeout": 2}]
    # The first slave's late answer is acked and dropped; it is free again.
    assert respond(k, slow, "late") == [{"ok": True}]
    assert k.out(m) == []
    respond(k, quick, "on time")
    assert k.out(m) == [{"id": "r", "body": "on time"}]
    # Out of retries, a timeout is final and says which attempt.
    k.submit(m, "t2", timeout=1, retries=0)
    k.out(m)
    k.tick(1)
    assert k.out(m) == [failed("t2", "TIMEOUT", attempt=1)]


def test_slave_losses_count_apart_from_retries() -> None:
    k = Kit(max_retries=1)
    m = k.master()
    k.submit(m, "r", retries=5)
    k.out(m)
    for attempt in (1, 2):
        s = k.slave("t", f"s{attempt}")
        assert k.out(s) == [job_frame("r", attempt=attempt)]
        k.broker.disconnect(s)
    assert k.out(m) == [failed("r", "CRASH", attempt=2)]
    assert k.broker.totals["retried"] == 0 and k.broker.totals["requeued"] == 1


def test_without_retries_failure_frames_are_as_before() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "plain", timeout=1)
    k.out(m)
    k.tick(1)
    assert k.out(m) == [failed("plain", "TIMEOUT")]  # no "attempt": Gloom's frame
    k.submit(m, "zero", retries=0)
    respond(k, s)  # the orphan's answer; "zero" goes to s
    k.out(m)
    fail(k, s)
    assert k.out(m) == [
        {"error": "job_error", "reason": "boom", "id": "zero", "category": "ERROR", "attempt": 1}
    ]


# ------------------------------------------------------------------ unique


def test_unique_attaches_and_every_master_gets_progress_and_result() -> None:
    k = Kit()
    a = k.master("a")
    b = k.master("b")
    s = k.slave("t")
    k.submit(a, "u", body=1, unique=True)
    assert k.submit(b, "u", body=2, unique=True) == [{"ok": True, "id": "u", "attached": True}]
    assert k.out(s) == [job_frame("u", 1)]  # the first submit's job, not a second one
    k.send(s, {"action": "progress", "body": 50})
    respond(k, s, "done")
    expected = [{"id": "u", "progress": 50}, {"id": "u", "body": "done"}]
    assert k.out(a) == expected and k.out(b) == expected
    assert k.broker.totals["submitted"] == 1


def test_unique_with_another_type_or_without_unique_is_id_exists() -> None:
    k = Kit()
    a = k.master("a")
    b = k.master("b")
    k.submit(a, "u")
    assert k.submit(b, "u", unique=True, job_type="other") == [
        {"error": "id_exists", "reason": "u"}
    ]
    assert k.submit(b, "u") == [{"error": "id_exists", "reason": "u"}]


def test_a_job_with_several_masters_goes_when_the_last_leaves() -> None:
    k = Kit()
    a = k.master("a")
    b = k.master("b")
    s = k.slave("t")
    k.submit(a, "run", unique=True)
    k.submit(a, "wait", unique=True)
    k.submit(b, "run", unique=True)
    k.submit(b, "wait", unique=True)
    k.broker.disconnect(a)
    assert sorted(k.broker.jobs) == ["run", "wait"] and k.broker.totals["withdrawn"] == 0
    k.broker.disconnect(b)
    assert k.broker.jobs == {} and k.broker.totals["withdrawn"] == 2
    assert ids(k.out(s)) == ["run"]
    assert respond(k, s) == [{"ok": True}]  # the orphan's answer


def test_a_detached_job_stays_when_every_master_leaves() -> None:
    k = Kit()
    a = k.master("a")
    b = k.master("b")
    k.submit(a, "d", detach=True)
    k.submit(b, "d", unique=True)
    k.broker.disconnect(a)
    k.broker.disconnect(b)
    assert list(k.broker.jobs) == ["d"] and k.broker.totals["withdrawn"] == 0


def test_attaching_to_a_finished_detached_job_answers_its_result_at_once() -> None:
    k = Kit(result_ttl=60)
    m = k.master()
    s = k.slave("t")
    k.submit(m, "d", detach=True)
    respond(k, s, 7)
    k.out(m)
    later = k.master("later")
    assert k.submit(later, "d", unique=True) == [
        {"ok": True, "id": "d", "attached": True},
        {"id": "d", "body": 7},
    ]
    assert k.submit(later, "d", unique=True, job_type="x") == [
        {"error": "id_exists", "reason": "d"}
    ]
    # Without unique the id is free again, as before.
    assert k.submit(later, "d") == [{"ok": True, "id": "d"}]


def test_a_master_attaching_to_its_own_job_hears_it_once() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "u", unique=True)
    assert k.submit(m, "u", unique=True) == [{"ok": True, "id": "u", "attached": True}]
    respond(k, s, 1)
    assert k.out(m) == [{"id": "u", "body": 1}]


def test_cancel_by_one_master_tells_the_others() -> None:
    k = Kit()
    a = k.master("a")
    b = k.master("b")
    c = k.master("c")
    k.submit(a, "u", unique=True)
    k.submit(b, "u", unique=True)
    k.out(a)
    assert k.send(c, {"action": "cancel", "id": "u"}) == [{"error": "unknown_id", "reason": "u"}]
    assert k.send(b, {"action": "cancel", "id": "u"}) == [{"ok": True, "id": "u"}]
    assert k.out(a) == [failed("u", "CANCELLED")]
    assert k.broker.jobs == {} and k.broker.totals["cancelled"] == 1


# ------------------------------------------------------------------ dead letters


def dead_job(k: Kit, master: Any, slave: Any, job_id: Any, **extra: Any) -> list[Any]:
    """Submit a detached job and fail it on `slave`: it becomes a dead letter."""
    k.submit(master, job_id, detach=True, **extra)
    assert ids(k.out(slave)) == [job_id]
    fail(k, slave, "ERROR", f"{job_id} failed")
    return k.out(master)


def test_a_detached_failure_is_a_dead_letter() -> None:
    k = Kit(result_ttl=60)
    m = k.master()
    s = k.slave("t")
    frames = dead_job(k, m, s, "x")
    error = {"error": "job_error", "reason": "x failed", "id": "x", "category": "ERROR"}
    assert frames == [error]  # its master, still here, hears it as before
    other = k.master("other")
    assert k.send(other, {"action": "result", "id": "x"}) == [error]
    k.tick(3600)  # not under --result-ttl
    assert k.send(other, {"action": "result", "id": "x"}) == [error]
    assert listed(k, other) == [("x", "dead")] and stats_row(k, other)["dead"] == 1
    assert k.submit(other, "x") == [{"error": "id_exists", "reason": "x"}]
    assert k.submit(other, "x", unique=True) == [
        {"ok": True, "id": "x", "attached": True},
        error,
    ]
    assert k.submit(other, "y", after=["x"]) == [
        {"ok": True, "id": "y"},
        failed("y", "DEPENDENCY", dependency="x"),
    ]
    assert k.send(other, {"action": "cancel", "id": "x"}) == [
        {"error": "invalid_state", "reason": "dead"}
    ]
    totals = k.broker.totals
    assert (totals["dead"], totals["failed"]) == (1, 2)


def test_timeout_crash_and_dependency_make_dead_letters_cancel_does_not() -> None:
    k = Kit(max_retries=0)
    m = k.master()
    k.submit(m, "to", detach=True, timeout=1)
    k.submit(m, "crash", detach=True)
    k.submit(m, "dep", detach=True, after=["crash"])
    k.submit(m, "gone", detach=True, delay=50)
    s1 = k.slave("t", "s1")
    assert ids(k.out(s1)) == ["to"]
    k.tick(1)
    s2 = k.slave("t", "s2")
    assert ids(k.out(s2)) == ["crash"]
    k.broker.disconnect(s2)
    k.send(m, {"action": "cancel", "id": "gone"})
    dead = sorted(job_id for job_id, state in listed(k, m) if state == "dead")
    assert dead == ["crash", "dep", "to"]
    assert "gone" not in k.broker.jobs
    # HALTED is not a dead letter either: the daemon stops and keeps nothing.
    assert k.broker.halt() == 0


def test_max_dead_drops_the_oldest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gloomd")
    k = Kit(max_dead=2)
    m = k.master()
    s = k.slave("t")
    for job_id in ("a", "b", "c"):
        dead_job(k, m, s, job_id)
    assert [job_id for job_id, _ in listed(k, m, state="dead")] == ["b", "c"]
    assert k.send(m, {"action": "result", "id": "a"}) == [{"error": "unknown_id", "reason": "a"}]
    assert k.submit(m, "a") == [{"ok": True, "id": "a"}]  # its id is free
    dropped = [fields(r) for r in caplog.records if r.msg == "dead_dropped"]
    assert dropped == [{"id": "a", "type": "t", "max_dead": 2}]


def test_kick_by_id_puts_a_dead_job_back_with_its_attempts() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    dead_job(k, m, s, "x", retries=1)
    k.tick(1)  # its one retry
    assert ids(k.out(s)) == ["x"]
    fail(k, s)
    assert listed(k, m, state="dead") == [("x", "dead")]
    k.submit(m, "queued-first")
    assert ids(k.out(s)) == ["queued-first"]
    k.submit(m, "queued-second")
    assert k.send(m, {"action": "kick", "id": "x"}) == [{"ok": True, "id": "x"}]
    # It queues by the moment of the kick: behind the job queued before it.
    assert respond(k, s) == [{"ok": True}, job_frame("queued-second")]
    assert respond(k, s) == [{"ok": True}, job_frame("x", attempt=3)]
    # Retries left are reset: one more retry before it is dead again.
    fail(k, s)
    k.tick(1)
    assert k.out(s) == [job_frame("x", attempt=4)]
    fail(k, s)
    assert listed(k, m, state="dead") == [("x", "dead")]
    assert k.broker.totals["submitted"] == 4  # three submits and a kick


def test_a_kicked_timeout_is_not_completed_by_the_slave_that_timed_out() -> None:
    """A detached job dies of the daemon's TIMEOUT while its slave still works on
    it (an orphan, whose late answer is acked and dropped).  Kicked, it runs on
    another slave: the first slave's late answer must not complete it."""
    k = Kit()
    m = k.master()
    late, fresh = k.slave("t", "late"), k.slave("t", "fresh")
    k.submit(m, "x", detach=True, timeout=1)
    assert ids(k.out(late)) == ["x"]
    k.tick(1)
    assert k.out(m) == [{"error": "job_failed", "reason": "x", "id": "x", "category": "TIMEOUT"}]
    assert k.send(m, {"action": "kick", "id": "x"}) == [{"ok": True, "id": "x"}]
    assert k.out(fresh) == [{**job_frame("x", attempt=2), "timeout": 1}]
    assert k.send(late, {"action": "respond", "body": "late"}) == [{"ok": True}]
    assert listed(k, m) == [("x", "running")]
    assert k.send(fresh, {"action": "respond", "body": "fresh"}) == [{"ok": True}]
    assert k.send(m, {"action": "result", "id": "x"}) == [{"id": "x", "body": "fresh"}]


def test_kick_errors() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "run")
    k.submit(m, "queued")
    k.submit(m, "later", delay=9)
    k.submit(m, "waits", after=["queued"])
    for job_id, state in (("run", "running"), ("queued", "queued"), ("later", "delayed"),
                          ("waits", "waiting")):  # fmt: skip
        assert k.send(m, {"action": "kick", "id": job_id}) == [
            {"error": "invalid_state", "reason": state}
        ]
    assert k.send(m, {"action": "kick", "id": "nope"}) == [
        {"error": "unknown_id", "reason": "nope"}
    ]
    assert ids(k.out(s)) == ["run"]


def test_kick_by_type_takes_the_oldest_first() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    u = k.slave("u", "u")
    for job_id in range(5):
        dead_job(k, m, s, job_id)
    dead_job(k, m, u, "other", job_type="u")
    k.broker.disconnect(s)
    assert k.send(m, {"action": "kick", "type": "t", "limit": 2}) == [{"ok": True, "kicked": 2}]
    assert [job_id for job_id, _ in listed(k, m, state="dead")] == [2, 3, 4, "other"]
    assert listed(k, m, state="queued") == [(0, "queued"), (1, "queued")]
    assert k.send(m, {"action": "kick", "type": "t"}) == [{"ok": True, "kicked": 3}]
    assert k.send(m, {"action": "kick", "type": "t"}) == [{"ok": True, "kicked": 0}]
    assert k.send(m, {"action": "kick", "type": "nobody"}) == [{"ok": True, "kicked": 0}]


def test_a_large_kick_is_done_a_chunk_per_pass_and_answers_in_order() -> None:
    """The kicking master waits; what it sends meanwhile waits behind the kick,
    while every other connection is served at once."""
    total = 2 * KICK_CHUNK + 500
    k = Kit()
    m = k.master()
    s = k.slave("t")
    for job_id in range(total):
        dead_job(k, m, s, job_id)
    k.broker.disconnect(s)
    other = k.master("other")
    assert k.send(m, {"action": "kick", "type": "t"}) == []  # the first chunk, no answer yet
    k.deliver(m, {"action": "ping"})
    k.deliver(m, {"action": "bogus"})
    k.deliver(m, {"action": "kick", "id": total - 1})  # still dead: kicked here, in order
    assert k.out(m) == []
    assert k.send(other, {"action": "stats"})[0]["stats"]["types"][0]["queued"] == KICK_CHUNK
    assert k.broker.next_deadline() == float("-inf")  # the timer comes back at once
    k.step()
    assert k.out(m) == []
    k.step()
    assert k.out(m) == [
        {"ok": True, "kicked": total},
        {"ok": True},
        {"error": "unknown_action", "reason": "bogus"},
        {"error": "invalid_state", "reason": "queued"},  # the kick got it first
    ]
    assert k.broker.next_deadline() > k.clock.now  # nothing left to do at once
    assert [job_id for job_id, _ in listed(k, other, limit=3)] == [0, 1, 2]


def test_a_master_leaving_during_its_kick_does_not_stop_it() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    for job_id in range(KICK_CHUNK + 10):
        dead_job(k, m, s, job_id)
    k.send(m, {"action": "kick", "type": "t"})
    k.broker.disconnect(m)
    k.tick(0)
    assert k.broker.dead_total == 0 and k.out(m) == []


def test_delete_rules() -> None:
    k = Kit()
    m = k.master()
    other = k.master("other")
    s = k.slave("t")
    dead_job(k, m, s, "dead")
    k.submit(m, "run", detach=True)
    assert ids(k.out(s)) == ["run"]
    k.submit(m, "queued", detach=True)
    k.submit(m, "child", after=["queued"])
    k.submit(m, "mine")
    k.out(m)
    assert k.send(other, {"action": "delete", "id": "dead"}) == [{"ok": True, "id": "dead"}]
    assert k.send(other, {"action": "result", "id": "dead"}) == [
        {"error": "unknown_id", "reason": "dead"}
    ]
    assert k.send(other, {"action": "delete", "id": "run"}) == [
        {"error": "invalid_state", "reason": "running"}
    ]
    assert k.send(other, {"action": "delete", "id": "queued"}) == [{"ok": True, "id": "queued"}]
    assert k.out(m) == [
        failed("queued", "CANCELLED"),
        failed("child", "DEPENDENCY", dependency="queued"),
    ]
    # An attached job: only its masters may delete it (as cancel); others: unknown_id.
    assert k.send(other, {"action": "delete", "id": "mine"}) == [
        {"error": "unknown_id", "reason": "mine"}
    ]
    assert k.send(m, {"action": "delete", "id": "mine"}) == [{"ok": True, "id": "mine"}]
    assert k.send(m, {"action": "delete", "id": "nope"}) == [
        {"error": "unknown_id", "reason": "nope"}
    ]
    assert list(k.broker.jobs) == ["run"]


# ------------------------------------------------------------------ pause


def test_a_paused_type_keeps_its_queue_and_slaves() -> None:
    k = Kit()
    m = k.master()
    assert k.send(m, {"action": "pause", "type": "t"}) == [{"ok": True}]
    first = k.slave("t", "first")
    second = k.slave("t", "second")
    k.submit(m, "low", priority=0)
    k.submit(m, "high", priority=5)
    k.submit(m, "delayed", delay=1)
    k.tick(1)  # a paused type's delayed jobs still become ready, and wait
    assert k.out(first) == [] and k.out(second) == []
    row = stats_row(k, m)
    assert (row["paused"], row["queued"], row["idle"]) == (True, 3, 2)
    assert k.send(m, {"action": "resume", "type": "t"}) == [{"ok": True}]
    # The best jobs go to the longest-idle slaves.
    assert ids(k.out(first)) == ["high"] and ids(k.out(second)) == ["low"]
    assert stats_row(k, m)["paused"] is False
    assert respond(k, first) == [{"ok": True}, job_frame("delayed")]


def test_pause_leaves_running_timeouts_alone_and_may_name_any_type() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "r", timeout=2)
    k.out(s)
    k.send(m, {"action": "pause", "type": "t"})
    k.out(m)
    k.tick(2)
    assert k.out(m) == [failed("r", "TIMEOUT")]
    respond(k, s)
    assert k.send(m, {"action": "pause", "type": ["any", 1]}) == [{"ok": True}]
    assert stats_row(k, m, ["any", 1])["paused"] is True
    assert k.send(m, {"action": "resume", "type": "never-seen"}) == [{"ok": True}]
    k.send(m, {"action": "resume", "type": ["any", 1]})
    assert k.send(m, {"action": "stats", "type": ["any", 1]})[0]["stats"]["types"] == []
