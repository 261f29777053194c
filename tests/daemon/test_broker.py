"""The broker's rules, one by one, with no sockets: frames in, outboxes read."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.brokerkit import Kit


def job_frame(job_id, body=None, job_type="t", attempt=1, **extra):
    """The job frame a slave gets: `attempt` only on a redelivery (protocol.md)."""
    frame = {"action": "job", "id": job_id, "type": job_type, "body": body}
    if attempt > 1:
        frame["attempt"] = attempt
    return {**frame, **extra}


# ------------------------------------------------------------------ basics


def test_submit_dispatch_respond() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    assert k.submit(m, "a", body={"x": 1}) == [{"ok": True, "id": "a"}]
    assert k.out(s) == [job_frame("a", {"x": 1})]
    assert k.send(s, {"action": "respond", "body": 42}) == [{"ok": True}]
    assert k.out(m) == [{"id": "a", "body": 42}]
    assert k.broker.jobs == {}


def test_ok_precedes_next_job_in_one_outbox() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, 1)
    k.submit(m, 2)
    assert k.out(s) == [job_frame(1)]
    assert k.send(s, {"action": "respond", "body": None}) == [{"ok": True}, job_frame(2)]


def test_priority_then_acceptance_order() -> None:
    k = Kit()
    m = k.master()
    for job_id, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        k.submit(m, job_id, priority=prio)
    s = k.slave("t")
    order = [k.out(s)[0]["id"]]
    for _ in range(4):
        _ok, job = k.send(s, {"action": "respond", "body": None})
        order.append(job["id"])
    assert order == ["b", "d", "a", "c", "e"]


def test_types_match_by_canonical_json() -> None:
    k = Kit()
    m = k.master()
    s_int = k.slave(1, "int")
    s_float = k.slave(1.0, "float")
    s_obj = k.slave({"b": 1, "a": 2}, "obj")
    k.submit(m, "x", job_type=1.0)
    k.submit(m, "y", job_type={"a": 2, "b": 1})
    k.submit(m, "z", job_type=1)
    assert [f["id"] for f in k.out(s_float)] == ["x"]
    assert [f["id"] for f in k.out(s_obj)] == ["y"]
    assert [f["id"] for f in k.out(s_int)] == ["z"]
    # A string type never matches a number whose JSON reads the same.
    s_str = k.slave("1", "str")
    k.submit(m, "w", job_type="1")
    assert [f["id"] for f in k.out(s_str)] == ["w"]
    assert k.out(s_int) == []


def test_ids_compare_exactly() -> None:
    k = Kit()
    m = k.master()
    assert k.submit(m, "1") == [{"ok": True, "id": "1"}]
    assert k.submit(m, 1) == [{"ok": True, "id": 1}]
    assert k.submit(m, 1) == [{"error": "id_exists", "reason": 1}]
    big = 2**70
    assert k.submit(m, big) == [{"ok": True, "id": big}]


def test_idle_slaves_share_work_round_robin() -> None:
    k = Kit()
    m = k.master()
    slaves = [k.slave("t", f"s{i}") for i in range(3)]
    got = {i: 0 for i in range(3)}
    for n in range(30):
        k.submit(m, n)
        for i, s in enumerate(slaves):
            for f in k.out(s):
                if f.get("action") == "job":
                    got[i] += 1
                    k.send(s, {"action": "respond", "body": None})
    assert got == {0: 10, 1: 10, 2: 10}


# ------------------------------------------------------------------ failure rules


def test_lost_slave_requeues_ahead_of_later_equal_priority() -> None:
    k = Kit()
    m = k.master()
    s1 = k.slave("t", "s1")
    k.submit(m, "first")
    assert k.out(s1)[0]["id"] == "first"
    k.submit(m, "second")
    k.submit(m, "urgent", priority=1)
    k.broker.disconnect(s1)
    s2 = k.slave("t", "s2")
    order = []
    frames = k.out(s2)
    while frames:
        job = frames[-1]
        order.append((job["id"], job.get("attempt", 1)))
        frames = [f for f in k.send(s2, {"action": "respond", "body": None}) if "action" in f]
    assert order == [("urgent", 1), ("first", 2), ("second", 1)]
    assert [f["id"] for f in k.out(m) if "body" in f] == ["urgent", "first", "second"]
    assert k.broker.totals["requeued"] == 1


def test_fourth_loss_fails_job_with_crash() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, "j")
    for attempt in range(1, 5):
        s = k.slave("t", f"s{attempt}")
        assert k.out(s) == [job_frame("j", attempt=attempt)]
        k.broker.disconnect(s)
    assert k.out(m) == [{"error": "job_failed", "reason": "j", "id": "j", "category": "CRASH"}]
    assert k.broker.jobs == {} and k.broker.types == {}


def test_max_retries_is_configurable() -> None:
    k = Kit(max_retries=0)
    m = k.master()
    k.submit(m, "j")
    s = k.slave("t")
    k.broker.disconnect(s)
    assert k.out(m)[-1]["category"] == "CRASH"


def test_rejoin_while_holding_requeues_without_counting_a_loss() -> None:
    k = Kit(max_retries=0)
    m = k.master()
    s = k.slave("t")
    k.submit(m, "j")
    assert k.out(s)[0]["id"] == "j"
    # Switch type: the job goes back and nothing is lost.
    assert k.send(s, {"action": "join", "type": "other"}) == [{"ok": True}]
    s2 = k.slave("t", "s2")
    assert k.out(s2) == [job_frame("j", attempt=2)]
    k.send(s2, {"action": "respond", "body": 1})
    assert k.out(m)[-1] == {"id": "j", "body": 1}


def test_rejoin_same_type_gets_the_job_back() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "j")
    k.out(s)
    assert k.send(s, {"action": "join", "type": "t"}) == [{"ok": True}, job_frame("j", attempt=2)]


def test_master_lost_removes_queued_and_discards_running() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "running")
    k.submit(m, "queued")
    assert k.out(s)[0]["id"] == "running"
    k.broker.disconnect(m)
    # Both ids are free at once.
    m2 = k.master("m2")
    assert k.submit(m2, "running", job_type="u") == [{"ok": True, "id": "running"}]
    assert k.submit(m2, "queued", job_type="u") == [{"ok": True, "id": "queued"}]
    # The slave's late answer is acked, dropped, and the slave is free again.
    assert k.send(s, {"action": "respond", "body": "late"}) == [{"ok": True}]
    assert k.out(m2) == []
    k.submit(m2, "next")
    assert k.out(s) == [job_frame("next")]


def test_timeout_fails_job_and_late_respond_is_discarded() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "j", timeout=2.5)
    assert k.out(s) == [job_frame("j", timeout=2.5)]
    k.submit(m, "k")
    k.tick(2.4)
    assert k.out(m) == []
    k.tick(0.2)
    assert k.out(m) == [{"error": "job_failed", "reason": "j", "id": "j", "category": "TIMEOUT"}]
    # Progress on the dead job goes nowhere; its respond is acked and the slave moves on.
    assert k.send(s, {"action": "progress", "body": 50}) == []
    assert k.send(s, {"action": "respond", "body": "late"}) == [{"ok": True}, job_frame("k")]
    assert k.out(m) == []


def test_timeout_counts_from_dispatch_not_submit() -> None:
    k = Kit()
    m = k.master()
    k.submit(m, "j", timeout=1)
    k.tick(100)
    s = k.slave("t")
    assert k.out(s) == [job_frame("j", timeout=1)]
    k.tick(0.5)
    assert k.out(m)[1:] == []
    k.tick(0.6)
    assert k.out(m)[-1]["category"] == "TIMEOUT"


def test_timer_is_woken_only_for_an_earlier_deadline() -> None:
    """Jobs with one timeout expire in dispatch order: no wake-up per job."""
    k = Kit()
    b = k.broker
    m = k.master()
    slaves = [k.slave("t", name=f"s{i}") for i in range(3)]
    assert b.next_deadline() == float("inf")
    k.submit(m, "a", timeout=10)
    assert b.timers_changed and b.next_deadline() == 10
    k.clock.now = 1
    k.submit(m, "b", timeout=10)  # due at 11, after the 10 the timer sleeps to
    assert not b.timers_changed
    k.submit(m, "c", timeout=2)  # due at 3: the timer must wake sooner
    assert b.timers_changed and b.next_deadline() == 3
    k.send(slaves[0], {"action": "respond", "body": 1})
    assert not b.timers_changed  # its outcome (kept for `after`) expires in an hour


def test_timer_is_woken_for_the_first_outcome_only() -> None:
    k = Kit()
    b = k.broker
    m = k.master()
    s = k.slave("t")
    assert b.next_deadline() == float("inf")
    k.submit(m, "a")
    k.send(s, {"action": "respond", "body": 1})
    assert b.timers_changed and b.next_deadline() == 3600
    k.submit(m, "b")
    k.send(s, {"action": "respond", "body": 1})
    assert not b.timers_changed


def test_finished_jobs_do_not_pile_up_behind_their_timeouts() -> None:
    """A finished job's timeout entry is deleted lazily, but not kept for
    the whole timeout: memory stays bounded by the running jobs."""
    k = Kit()
    m = k.master()
    s = k.slave("t")
    for i in range(5000):
        k.submit(m, i, timeout=3600)
        k.out(s)
        k.send(s, {"action": "respond", "body": i})
    assert len(k.broker._timeouts) <= 1024
    k.out(m)
    k.submit(m, "last", timeout=3600)
    k.tick(3600.5)
    assert k.out(m)[-1] == {
        "error": "job_failed",
        "reason": "last",
        "id": "last",
        "category": "TIMEOUT",
    }


def test_progress_and_fail_reach_the_master() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "j")
    k.out(s)
    assert k.send(s, {"action": "progress", "body": {"pct": 10}}) == []
    assert k.send(s, {"action": "fail", "error": "ERROR", "reason": {"message": "boom"}}) == [
        {"ok": True}
    ]
    assert k.out(m) == [
        {"id": "j", "progress": {"pct": 10}},
        {"error": "job_error", "reason": {"message": "boom"}, "id": "j", "category": "ERROR"},
    ]
    assert k.submit(m, "j") == [{"ok": True, "id": "j"}]  # id free again


# ------------------------------------------------------------------ extensions


def test_cancel_rules() -> None:
    k = Kit()
    m = k.master()
    other = k.master("other")
    s = k.slave("t")
    k.submit(m, "run")
    k.submit(m, "wait")
    k.out(m)
    assert k.send(other, {"action": "cancel", "id": "wait"}) == [
        {"error": "unknown_id", "reason": "wait"}
    ]
    assert k.send(m, {"action": "cancel", "id": "run"}) == [
        {"error": "invalid_state", "reason": "running"}
    ]
    assert k.send(m, {"action": "cancel", "id": "wait"}) == [{"ok": True, "id": "wait"}]
    assert k.send(m, {"action": "cancel", "id": "wait"}) == [
        {"error": "unknown_id", "reason": "wait"}
    ]
    assert k.out(s) == [job_frame("run")]
    # The cancelled job is never sent.
    assert k.send(s, {"action": "respond", "body": 1}) == [{"ok": True}]
    assert k.broker.totals["cancelled"] == 1


def test_detached_job_survives_master_and_result_is_fetchable() -> None:
    k = Kit(result_ttl=60)
    m = k.master()
    k.submit(m, "d", detach=True, body=3)
    k.submit(m, "n", body=4)
    k.broker.disconnect(m)
    m2 = k.master("m2")
    assert k.send(m2, {"action": "result", "id": "d"}) == [{"error": "not_ready", "reason": "d"}]
    assert k.send(m2, {"action": "result", "id": "n"}) == [{"error": "unknown_id", "reason": "n"}]
    s = k.slave("t")
    assert k.out(s) == [job_frame("d", 3)]
    k.send(s, {"action": "respond", "body": 9})
    assert k.send(m2, {"action": "result", "id": "d"}) == [{"id": "d", "body": 9}]
    assert k.send(m2, {"action": "result", "id": "d"}) == [{"id": "d", "body": 9}]
    k.tick(61)
    assert k.send(m2, {"action": "result", "id": "d"}) == [{"error": "unknown_id", "reason": "d"}]


def test_detached_results_are_capped_oldest_first() -> None:
    k = Kit(max_results=2)
    m = k.master()
    s = k.slave("t")
    for i in range(3):
        k.submit(m, i, detach=True)
        k.send(s, {"action": "respond", "body": i})
    k.out(m)  # the connected submitter got each result as well
    assert k.send(m, {"action": "result", "id": 0}) == [{"error": "unknown_id", "reason": 0}]
    assert k.send(m, {"action": "result", "id": 2}) == [{"id": 2, "body": 2}]


def test_any_master_may_cancel_a_detached_job_and_submitter_is_told() -> None:
    k = Kit()
    m = k.master()
    other = k.master("other")
    k.submit(m, "d", detach=True)
    k.out(m)
    assert k.send(other, {"action": "cancel", "id": "d"}) == [{"ok": True, "id": "d"}]
    failed = {"error": "job_failed", "reason": "d", "id": "d", "category": "CANCELLED"}
    assert k.out(m) == [failed]
    assert k.send(other, {"action": "result", "id": "d"}) == [failed]


def test_queue_cap() -> None:
    k = Kit(max_queued=2)
    m = k.master()
    k.submit(m, 1)
    k.submit(m, 2)
    assert k.submit(m, 3) == [{"error": "queue_full", "reason": 3}]
    k.send(m, {"action": "cancel", "id": 1})
    assert k.submit(m, 3) == [{"ok": True, "id": 3}]


def test_stats_shape() -> None:
    k = Kit()
    m = k.master()
    k.slave("t")
    k.submit(m, 1)
    k.submit(m, 2)
    k.submit(m, 3, job_type=["list", "type"])
    (reply,) = k.send(m, {"action": "stats"})
    stats = reply["stats"]
    assert reply["ok"] is True
    lifecycle = {"delayed": 0, "waiting": 0, "dead": 0, "paused": False}
    assert stats["types"] == [
        {"type": "t", "queued": 1, "running": 1, "slaves": 1, "idle": 0, **lifecycle,
         "completed": 0, "failed": 0},
        {"type": ["list", "type"], "queued": 1, "running": 0, "slaves": 0, "idle": 0,
         **lifecycle, "completed": 0, "failed": 0},
    ]  # fmt: skip
    assert list(stats["types"][0]) == [
        "type", "queued", "running", "slaves", "idle",
        "delayed", "waiting", "dead", "paused", "completed", "failed",
    ]  # fmt: skip
    assert stats["totals"] == {
        "submitted": 3,
        "completed": 0,
        "failed": 0,
        "requeued": 0,
        "cancelled": 0,
        "retried": 0,
        "dead": 0,
        "withdrawn": 0,
    }
    assert stats["connections"] == {"masters": 1, "slaves": 1}
    assert "uptime_s" in stats


# ------------------------------------------------------------------ dependencies


def test_dependency_waits_then_runs() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "a")
    k.submit(m, "b", after=["a"])
    assert [f["id"] for f in k.out(s)] == ["a"]
    assert k.send(s, {"action": "respond", "body": 1}) == [{"ok": True}, job_frame("b")]


def test_dependency_failure_fails_dependents_without_running() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "a")
    k.submit(m, "b", after=["a"])
    k.submit(m, "c", after=["b"])
    assert k.out(s) == [job_frame("a")]
    assert k.send(s, {"action": "fail", "error": "ERROR", "reason": "x"}) == [{"ok": True}]
    assert k.out(m)[1:] == [
        {
            "error": "job_failed",
            "reason": "b",
            "id": "b",
            "category": "DEPENDENCY",
            "dependency": "a",
        },
        {
            "error": "job_failed",
            "reason": "c",
            "id": "c",
            "category": "DEPENDENCY",
            "dependency": "b",
        },
    ]
    assert k.broker.queued_total == 0 and k.broker.jobs == {}


def test_dependency_on_finished_jobs_and_rejections() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "ok")
    k.send(s, {"action": "respond", "body": 1})
    k.submit(m, "bad")
    k.send(s, {"action": "fail", "error": "ERROR", "reason": None})
    k.out(m)
    assert k.submit(m, "x", after=["ok"]) == [{"ok": True, "id": "x"}]
    assert k.submit(m, "y", after=["bad"]) == [
        {"ok": True, "id": "y"},
        {
            "error": "job_failed",
            "reason": "y",
            "id": "y",
            "category": "DEPENDENCY",
            "dependency": "bad",
        },
    ]
    assert k.submit(m, "z", after=["nope"]) == [{"error": "unknown_dependency", "reason": "nope"}]
    assert k.submit(m, "self", after=["self"]) == [{"error": "dependency_cycle", "reason": "self"}]


# ------------------------------------------------------------------ shutdown and leaks


def test_halt_answers_every_unanswered_job() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t")
    k.submit(m, "run")
    k.submit(m, "queued")
    assert k.out(s) == [job_frame("run")]
    assert k.broker.halt() == 2
    halted = k.out(m)
    assert sorted(f["id"] for f in halted) == ["queued", "run"]
    assert all(f["error"] == "job_failed" and f["category"] == "HALTED" for f in halted)
    assert k.send(s, {"action": "respond", "body": 1}) == [{"ok": True}]
    assert k.out(m) == []
    assert k.submit(m, "late") == [
        {"error": "job_failed", "reason": "late", "id": "late", "category": "HALTED"}
    ]


def test_no_leaks_after_everyone_leaves() -> None:
    k = Kit()
    masters = [k.master(f"m{i}") for i in range(3)]
    slaves = [k.slave(t, f"s{t}") for t in ("a", "b")]
    for i, m in enumerate(masters):
        for j in range(5):
            k.submit(
                m,
                f"{i}-{j}",
                job_type="ab"[j % 2],
                timeout=5 if j == 0 else None,
                after=[f"{i}-0"] if j == 4 else [],
            )
    k.broker.disconnect(slaves[0])
    k.broker.disconnect(masters[0])
    k.tick(10)
    for p in masters[1:] + slaves[1:]:
        k.broker.disconnect(p)
    k.assert_empty()


# ------------------------------------------------------------------ the order, as a property

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(min_value=-2, max_value=2)),
        st.tuples(st.just("join"), st.none()),
        st.tuples(st.just("respond"), st.integers(min_value=0, max_value=7)),
        st.tuples(st.just("drop"), st.integers(min_value=0, max_value=7)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_dispatch_order_property(operations) -> None:  # type: ignore[no-untyped-def]
    """Any interleaving: each dispatch is the best queued job by (priority, acceptance).

    A model keeps the queued jobs; whenever the broker hands a job to a slave,
    it must be the model's minimum of (-priority, seq), where a requeued job
    keeps its original seq.  Every job is answered exactly once at the end.
    """
    k = Kit(max_retries=100)
    m = k.master()
    model: dict[int, tuple[int, int]] = {}  # queued job id -> (-priority, seq)
    accepted: dict[int, tuple[int, int]] = {}
    slaves: list = []
    holding: dict[int, int] = {}  # slave index -> job id
    next_id = 0

    def collect(idx: int) -> None:
        for f in k.out(slaves[idx]):
            if f.get("action") == "job":
                assert idx not in holding
                best = min(model, key=lambda j: model[j])
                assert f["id"] == best, (f["id"], best, model)
                del model[best]
                holding[idx] = f["id"]

    def collect_all() -> None:
        for idx in range(len(slaves)):
            if slaves[idx] is not None:
                collect(idx)

    for op, arg in operations:
        if op == "submit":
            next_id += 1
            accepted[next_id] = (-arg, next_id)
            model[next_id] = (-arg, next_id)
            k.deliver(
                m, {"action": "submit", "id": next_id, "type": "t", "priority": arg, "body": None}
            )
            collect_all()
        elif op == "join":
            slaves.append(k.slave("t", f"s{len(slaves)}"))
            collect(len(slaves) - 1)
        elif slaves:
            idx = arg % len(slaves)
            if slaves[idx] is None or idx not in holding:
                continue
            if op == "respond":
                k.deliver(slaves[idx], {"action": "respond", "body": None})
                del holding[idx]
                collect(idx)
            else:
                job_id = holding.pop(idx)
                model[job_id] = accepted[job_id]
                k.broker.disconnect(slaves[idx])
                slaves[idx] = None
                collect_all()
    # Drain with one fresh slave: every job answered exactly once.
    slaves.append(k.slave("t", "drain"))
    collect(len(slaves) - 1)
    while holding:
        for idx in list(holding):
            k.deliver(slaves[idx], {"action": "respond", "body": None})
            del holding[idx]
            collect(idx)
    assert model == {}
    results = [f["id"] for f in k.out(m) if "body" in f]
    assert sorted(results) == sorted(accepted)


def test_ping_on_both_ports() -> None:
    k = Kit()
    m = k.master()
    s = k.slave()
    assert k.send(m, {"action": "ping"}) == [{"ok": True}]
    assert k.send(s, {"action": "ping"}) == [{"ok": True}]
    # A slave holding a job may ping too (a heartbeat while it works).
    k.send(s, {"action": "join", "type": "t"})
    k.submit(m, 1)
    assert k.out(s)[0]["id"] == 1
    assert k.send(s, {"action": "ping"}) == [{"ok": True}]


def test_dependents_released_together_go_out_in_priority_order() -> None:
    k = Kit()
    m = k.master()
    s = k.slave("t", "s")
    k.submit(m, "gate")
    for job_id, prio in [("low", 0), ("high", 9), ("mid", 5)]:
        k.submit(m, job_id, priority=prio, after=["gate"])
    idle = [k.slave("t", f"idle{i}") for i in range(3)]
    assert k.out(s)[0]["id"] == "gate"
    k.send(s, {"action": "respond", "body": None})  # s re-idles after the others
    got = [[f["id"] for f in k.out(p) if f.get("action") == "job"] for p in idle]
    assert got == [["high"], ["mid"], ["low"]]
