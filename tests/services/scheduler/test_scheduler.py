"""JobScheduler behaviour on trio's MockClock.

Rules for this file (as in trio-websocket's tests): anything that sleeps runs
on `autojump_clock`, so hours of schedule pass in milliseconds; the scheduler
reads its wall clock from `Wall`, which is trio's clock plus a fixed epoch,
so fire times can be asserted exactly; state changes are awaited through the
`dump_status` callback (`Store.wait_until`), never by sleeping.  Tests whose
job runs in a worker thread use a manual MockClock instead: with autojump,
mock hours would pass while the thread runs.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
import trio
import trio.testing

from gloomd.scheduler import FILTERED_MESSAGE, JobExistError, JobScheduler
from gloomd.scheduler.firetime import JobConfigError, NextFireTimeError

from .schedjobs import tasks
from .schedjobs.store import Store

pytestmark = pytest.mark.timeout(30)

T0 = "2020-01-01T10:00:00+00:00"


def ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


class Wall:
    """Epoch seconds that advance with trio's (mock) clock, from a fixed start."""

    def __init__(self, iso: str = T0) -> None:
        self.base = ts(iso)
        self.start = trio.current_time()

    def __call__(self) -> float:
        return self.base + (trio.current_time() - self.start)


class Recorder:
    """An async job function that records the wall time of each call."""

    def __init__(self, wall: Wall) -> None:
        self.wall = wall
        self.times: list[float] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.times.append(self.wall())


def approx(values: list[float]) -> Any:
    return pytest.approx(values, abs=1e-6)


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    tasks.CALLS.clear()


# --- timing -------------------------------------------------------------------


async def test_fires_on_time_without_at(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall()
    rec = Recorder(wall)
    sched = JobScheduler({"j": {"func": rec, "every": [10, "minute"]}}, wall_clock=wall)
    await nursery.start(sched.run)
    await trio.sleep(35 * 60)
    base = wall.base
    assert rec.times == approx([base, base + 600, base + 1200, base + 1800])


async def test_sub_minute_interval_is_honoured(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # pykit's one-minute tick fired an every-50-s job once a minute; not here.
    wall = Wall()
    rec = Recorder(wall)
    sched = JobScheduler({"j": {"func": rec, "every": [50, "second"]}}, wall_clock=wall)
    await nursery.start(sched.run)
    await trio.sleep(175)
    assert rec.times == approx([wall.base + k * 50 for k in range(4)])


async def test_at_job_waits_for_its_slot_across_dst(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall("2018-03-23T12:00:00+01:00")
    rec = Recorder(wall)
    conf = {
        "func": rec,
        "every": [1, "day"],
        "at": {"hour": 2, "minute": 30, "second": 0},
        "timezone": "Europe/Berlin",
    }
    sched = JobScheduler({"nightly": conf}, wall_clock=wall, max_sleep=3600)
    await nursery.start(sched.run)
    await trio.sleep(4 * 86400)
    assert rec.times == approx(
        [
            ts("2018-03-24T02:30:00+01:00"),
            ts("2018-03-25T03:30:00+02:00"),
            ts("2018-03-26T02:30:00+02:00"),
            ts("2018-03-27T02:30:00+02:00"),
        ]
    )


# Worker-thread tests use a manual MockClock: with autojump, mock hours would
# pass while the thread runs.
async def test_sync_function_runs_in_a_thread_with_args(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    store = Store()
    conf = {
        "func": "tests.services.scheduler.schedjobs.tasks:record",
        "args": [1, 2],
        "kwargs": {"c": 3},
        "every": [1, "hour"],
    }
    sched = JobScheduler({"adder": conf}, dump_status=store.dump, wall_clock=Wall())
    await nursery.start(sched.run)
    st = await store.wait_until(lambda s: any("finished" in line for line in s["adder"]["log"]))
    assert tasks.CALLS == [("record", (1, 2), {"c": 3})]
    assert st["adder"]["active_threads"] == {}
    assert st["adder"]["message"] == ""
    assert conf["concurrence_n"] == 1  # pykit writes the default into the conf


async def test_failing_job_is_logged_and_recorded_and_keeps_firing(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store()
    # async: a worker thread could let the autojump clock run past the next fires
    conf = {
        "func": "tests.services.scheduler.schedjobs.tasks:explode_async",
        "args": ["kaboom"],
        "every": [1, "hour"],
    }
    sched = JobScheduler({"bad": conf}, dump_status=store.dump, wall_clock=Wall())
    with caplog.at_level(logging.ERROR, logger="gloomd.scheduler"):
        await nursery.start(sched.run)
        st = await store.wait_until(lambda s: s["bad"]["message"].startswith("failed"))
        assert st["bad"]["message"] == "failed: ValueError: kaboom"
        assert "Traceback" in st["bad"]["traceback"] and "kaboom" in st["bad"]["traceback"]
        assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
        await trio.sleep(2 * 3600 + 1)
    assert [c[0] for c in tasks.CALLS] == ["explode_async"] * 3


async def test_failing_function_in_a_thread_is_recorded(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    store = Store()
    conf = {"func": "tests.services.scheduler.schedjobs.tasks:explode", "every": [1, "hour"]}
    sched = JobScheduler({"bad": conf}, dump_status=store.dump, wall_clock=Wall())
    await nursery.start(sched.run)
    st = await store.wait_until(lambda s: s["bad"]["message"].startswith("failed"))
    assert st["bad"]["message"] == "failed: ValueError: boom"
    assert st["bad"]["active_threads"] == {}


# --- concurrence_n ------------------------------------------------------------------


async def test_concurrence_n_skips_and_logs(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall()
    store = Store()
    release = trio.Event()
    started: list[float] = []

    async def slow() -> None:
        started.append(wall())
        await release.wait()

    conf = {"func": slow, "every": [1, "minute"], "concurrence_n": 2}
    sched = JobScheduler({"slow": conf}, dump_status=store.dump, wall_clock=wall)
    await nursery.start(sched.run)
    await trio.sleep(3 * 60 + 30)
    assert started == approx([wall.base, wall.base + 60])
    st = sched.status_snapshot()["slow"]
    assert len(st["active_threads"]) == 2
    skipped = [line for line in st["log"] if "already have 2 runs for job: slow; skipped" in line]
    assert len(skipped) == 2
    assert st["message"] == skipped[-1]
    assert st["fire_time"]["ts"] == pytest.approx(wall.base + 180)

    release.set()
    await trio.sleep(60)
    assert started == approx([wall.base, wall.base + 60, wall.base + 240])
    assert sched.status_snapshot()["slow"]["active_threads"] == {}
    assert len(sched.status_snapshot()["slow"]["log"]) <= 2 * 2 + 3


# --- filter ---------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["filter_job", "should_job_run"])
async def test_filter_skips_jobs_not_meant_for_this_host(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, keyword: str
) -> None:
    wall = Wall()
    adder, multiplier = Recorder(wall), Recorder(wall)
    jobs = {
        "add": {"func": adder, "every": [1, "hour"], "roles": ["adder"]},
        "mul": {"func": multiplier, "every": [1, "hour"], "roles": ["multiplier"]},
    }
    seen: list[Any] = []

    def only_adders(conf: dict[str, Any]) -> bool:
        seen.append(conf)
        return "adder" in conf["roles"]

    sched = JobScheduler(jobs, wall_clock=wall, **{keyword: only_adders})
    await nursery.start(sched.run)
    await trio.sleep(2.5 * 3600)
    assert adder.times == approx([wall.base + k * 3600 for k in range(3)])
    assert multiplier.times == []
    st = sched.status_snapshot()["mul"]
    assert st["message"] == FILTERED_MESSAGE
    assert st["next_fire_time"]["ts"] == pytest.approx(wall.base + 3 * 3600)
    assert jobs["mul"] in seen  # the filter sees the conf itself, extra keys included


async def test_filter_that_raises_skips_and_says_why(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall()
    rec = Recorder(wall)

    def broken(conf: dict[str, Any]) -> bool:
        raise KeyError("roles")

    sched = JobScheduler(
        {"j": {"func": rec, "every": [1, "hour"]}}, filter_job=broken, wall_clock=wall
    )
    await nursery.start(sched.run)
    await trio.sleep(1)
    assert rec.times == []
    assert sched.status_snapshot()["j"]["message"] == "filter_job failed: KeyError('roles')"


def test_filter_job_and_should_job_run_together_is_an_error() -> None:
    with pytest.raises(TypeError):
        JobScheduler({}, filter_job=bool, should_job_run=bool)


# --- add and delete while running ----------------------------------------------------------


async def test_add_and_delete_while_running(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall()
    daily, hourly = Recorder(wall), Recorder(wall)
    # max_sleep is huge: only the add itself can wake the loop in time.
    sched = JobScheduler(
        {"daily": {"func": daily, "every": [1, "day"]}}, wall_clock=wall, max_sleep=1e9
    )
    await nursery.start(sched.run)
    await trio.sleep(100)
    sched.add_job("hourly", {"func": hourly, "every": [1, "hour"]})
    await trio.sleep(1)
    assert hourly.times == approx([wall.base + 100])

    with pytest.raises(JobExistError, match="job: hourly already exists"):
        sched.add_job("hourly", {"func": hourly, "every": [1, "hour"]})
    with pytest.raises(NextFireTimeError):
        sched.add_job("bad", {"func": hourly, "every": [1, "hour"], "at": {"hour": 1}})
    with pytest.raises(JobConfigError):
        sched.add_job("bad", {"func": hourly, "every": [0, "hour"]})
    assert set(sched.jobs) == {"daily", "hourly"}

    await trio.sleep(3600)
    assert hourly.times == approx([wall.base + 100, wall.base + 3700])
    sched.delete_job("hourly")
    sched.delete_job("never-existed")  # no error, as in pykit
    assert "hourly" not in sched.status_snapshot()
    await trio.sleep(86400 - 3700)
    assert hourly.times == approx([wall.base + 100, wall.base + 3700])
    assert daily.times == approx([wall.base, wall.base + 86400])


async def test_delete_then_re_add_fires_once_per_slot(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall("2020-01-01T10:30:00+00:00")
    rec = Recorder(wall)

    def conf() -> dict[str, Any]:
        return {
            "func": rec,
            "every": [1, "hour"],
            "at": {"minute": 0, "second": 0},
            "timezone": "UTC",
        }

    sched = JobScheduler({"h": conf()}, wall_clock=wall, max_sleep=1e9)
    await nursery.start(sched.run)
    await trio.sleep(60)
    # The queue now holds the old job's 11:00 entry and the new job's 11:00 entry.
    sched.delete_job("h")
    sched.add_job("h", conf())
    await trio.sleep(90 * 60)
    assert rec.times == approx([ts("2020-01-01T11:00:00+00:00"), ts("2020-01-01T12:00:00+00:00")])


async def test_many_jobs_each_fire_at_their_own_time(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall("2020-01-01T10:00:30+00:00")
    fired: dict[int, list[float]] = {m: [] for m in range(60)}

    def job_for(minute: int) -> dict[str, Any]:
        async def job() -> None:
            fired[minute].append(wall())

        return {
            "func": job,
            "every": [1, "hour"],
            "at": {"minute": minute, "second": 0},
            "timezone": "UTC",
        }

    sched = JobScheduler({f"m{m}": job_for(m) for m in range(60)}, wall_clock=wall, max_sleep=1e9)
    await nursery.start(sched.run)
    await trio.sleep(3600)
    first_hour = ts("2020-01-01T10:00:00+00:00")
    for minute, times in fired.items():
        expected = first_hour + minute * 60 + (3600 if minute == 0 else 0)
        assert times == approx([expected]), minute


async def test_add_job_from_another_thread_wakes_the_loop(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    # A manual MockClock: time stands still, so the fire must come from the wake-up.
    wall = Wall()
    store = Store()
    sched = JobScheduler({}, dump_status=store.dump, wall_clock=wall, max_sleep=1e9)
    await nursery.start(sched.run)
    conf = {
        "func": "tests.services.scheduler.schedjobs.tasks:record_async",
        "args": ["hello"],
        "every": [1, "day"],
    }
    await trio.to_thread.run_sync(sched.add_job, "late", conf)
    st = await store.wait_until(lambda s: "fire_time" in s.get("late", {}))
    assert st["late"]["fire_time"]["ts"] == wall.base
    await trio.testing.wait_all_tasks_blocked()
    assert tasks.CALLS == [("record_async", ("hello",), {})]
    await trio.to_thread.run_sync(sched.delete_job, "late")
    await store.wait_until(lambda s: "late" not in s)


# --- status: dump, reload, restart ----------------------------------------------------------------


def hourly_at(rec: Recorder) -> dict[str, Any]:
    return {"func": rec, "every": [1, "hour"], "at": {"minute": 0, "second": 0}, "timezone": "utc"}


async def run_for(sched: JobScheduler, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_restart_reloads_status_without_double_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Store()
    wall = Wall("2020-01-01T10:30:00+00:00")
    rec = Recorder(wall)
    await run_for(JobScheduler({"h": hourly_at(rec)}, store.dump, wall_clock=wall), 45 * 60)
    assert rec.times == approx([ts("2020-01-01T11:00:00+00:00")])
    saved = store.last
    assert saved["h"]["next_fire_time"] == {
        "ts": ts("2020-01-01T12:00:00+00:00"),
        "string": "2020-01-01T12:00:00+00:00",
    }
    assert saved["h"]["fire_time"]["ts"] == pytest.approx(ts("2020-01-01T11:00:00+00:00"))

    # Restart 0.5 s after the 11:00 fire: the reloaded next fire time holds, 11:00 is not
    # fired again.
    for restart in ("2020-01-01T11:00:00.500000+00:00", "2020-01-01T11:45:00+00:00"):
        store2 = Store(initial=saved)
        wall2 = Wall(restart)
        rec2 = Recorder(wall2)
        sched2 = JobScheduler({"h": hourly_at(rec2)}, store2.dump, store2.reload, wall_clock=wall2)
        await run_for(sched2, ts("2020-01-01T12:30:00+00:00") - wall2.base)
        assert rec2.times == approx([ts("2020-01-01T12:00:00+00:00")])


async def test_restart_of_a_job_without_at_does_not_fire_it_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Without `at` a fresh job fires at once; only the reloaded status stops that.
    store = Store()
    wall = Wall("2020-01-01T10:00:00+00:00")
    rec = Recorder(wall)
    await run_for(
        JobScheduler({"j": {"func": rec, "every": [1, "hour"]}}, store.dump, wall_clock=wall),
        10 * 60,
    )
    assert rec.times == approx([wall.base])

    wall2 = Wall("2020-01-01T10:30:00+00:00")
    rec2 = Recorder(wall2)
    store.initial = store.last
    sched2 = JobScheduler(
        {"j": {"func": rec2, "every": [1, "hour"]}}, store.dump, store.reload, wall_clock=wall2
    )
    await run_for(sched2, 60 * 60)
    assert rec2.times == approx([ts("2020-01-01T11:00:00+00:00")])


async def test_restart_after_downtime_fires_once_then_continues_from_now(
    autojump_clock: trio.testing.MockClock,
) -> None:
    saved = {
        "h": {
            "active_threads": {},
            "log": [],
            "message": "",
            "next_fire_time": {"ts": ts("2020-01-01T12:00:00+00:00"), "string": "x"},
            "schedule": "every 1 hour at minute=0,second=0 [utc]",
        }
    }
    store = Store(initial=saved)
    wall = Wall("2020-01-01T15:20:00+00:00")
    rec = Recorder(wall)
    await run_for(
        JobScheduler({"h": hourly_at(rec)}, store.dump, store.reload, wall_clock=wall), 50 * 60
    )
    assert rec.times == approx([wall.base, ts("2020-01-01T16:00:00+00:00")])


async def test_changed_schedule_recomputes_instead_of_trusting_the_old_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    saved = {
        "h": {
            "active_threads": {},
            "log": [],
            "next_fire_time": {"ts": ts("2020-01-01T10:05:00+00:00"), "string": "x"},
            "schedule": "every 1 hour [utc]",
        }
    }
    store = Store(initial=saved)
    wall = Wall("2020-01-01T10:01:00+00:00")
    rec = Recorder(wall)
    await run_for(
        JobScheduler({"h": hourly_at(rec)}, store.dump, store.reload, wall_clock=wall), 30 * 60
    )
    assert rec.times == []  # the old 10:05 belonged to another schedule; the new one is 11:00
    assert store.last["h"]["next_fire_time"]["ts"] == ts("2020-01-01T11:00:00+00:00")


async def test_runs_active_at_shutdown_are_reported_after_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Store()
    wall = Wall()

    async def forever() -> None:
        await trio.sleep_forever()

    await run_for(
        JobScheduler({"f": {"func": forever, "every": [1, "day"]}}, store.dump, wall_clock=wall), 10
    )
    saved = store.last
    (run_id,) = saved["f"]["active_threads"]
    assert run_id.startswith("sched:f:")
    sched = JobScheduler(
        {"f": {"func": forever, "every": [1, "day"]}}, reload_status=lambda: saved, wall_clock=wall
    )
    st = sched.status_snapshot()["f"]
    assert st["active_threads"] == {}
    assert st["message"] == f"runs aborted by restart: {run_id}"
    assert st["next_fire_time"] == saved["f"]["next_fire_time"]


@pytest.mark.parametrize(
    "garbage",
    [
        [1, 2, 3],
        "status",
        {"j": "not a dict"},
        {"j": {"active_threads": "x", "log": "y", "next_fire_time": {"ts": "soon"}, "message": 5}},
        {"j": {"next_fire_time": {"ts": float("nan")}}},
        {"j": {"next_fire_time": {"ts": True}}},
    ],
)
async def test_reloaded_garbage_is_validated_away(
    autojump_clock: trio.testing.MockClock, garbage: Any
) -> None:
    wall = Wall()
    rec = Recorder(wall)
    store = Store()
    sched = JobScheduler(
        {"j": {"func": rec, "every": [1, "hour"]}}, store.dump, lambda: garbage, wall_clock=wall
    )
    st = sched.status_snapshot()["j"]
    assert (
        st["active_threads"] == {}
        and isinstance(st["log"], list)
        and isinstance(st["message"], str)
    )
    assert "next_fire_time" not in st
    await run_for(sched, 1)
    assert rec.times == approx([wall.base])


def test_reload_status_that_raises_starts_afresh(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, Any]:
        raise OSError("disk on fire")

    sched = JobScheduler({"j": {"func": print, "every": [1, "hour"]}}, reload_status=broken)
    assert sched.status_snapshot() == {"j": {"active_threads": {}, "log": [], "message": ""}}
    assert "reload_status failed" in caplog.text


async def test_dump_gets_a_snapshot_not_the_live_dict(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall()
    store = Store()
    sched = JobScheduler(
        {"j": {"func": Recorder(wall), "every": [1, "minute"]}}, store.dump, wall_clock=wall
    )
    await nursery.start(sched.run)
    await trio.sleep(150)
    first = store.snapshots[0]
    assert first["j"]["next_fire_time"]["ts"] == pytest.approx(wall.base + 60)
    first["j"]["log"].append("tampered")
    assert "tampered" not in sched.status_snapshot()["j"]["log"]
    assert store.last["j"]["next_fire_time"]["ts"] == pytest.approx(wall.base + 180)
    assert "tampered" not in store.last["j"]["log"]


async def test_dump_copies_only_the_jobs_that_changed(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    wall = Wall()
    store = Store()
    jobs = {"often": {"func": Recorder(wall), "every": [1, "minute"]}}
    jobs.update({f"idle{i}": {"func": Recorder(wall), "every": [1, "day"]} for i in range(3)})
    sched = JobScheduler(jobs, store.dump, wall_clock=wall)
    await nursery.start(sched.run)
    await trio.sleep(150)
    before, after = store.snapshots[-3], store.last
    assert before["often"] is not after["often"]
    assert before["often"]["next_fire_time"] != after["often"]["next_fire_time"]
    assert all(before[f"idle{i}"] is after[f"idle{i}"] for i in range(3))  # untouched: shared
    assert after == sched.status_snapshot()


async def test_dump_status_failure_does_not_stop_the_scheduler(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    wall = Wall()
    rec = Recorder(wall)

    def dump(status: dict[str, Any]) -> None:
        raise OSError("read-only file system")

    sched = JobScheduler({"j": {"func": rec, "every": [1, "minute"]}}, dump, wall_clock=wall)
    await nursery.start(sched.run)
    await trio.sleep(150)
    assert len(rec.times) == 3
    assert "dump_status failed" in caplog.text


# --- the blocking API -------------------------------------------------------------------------


async def test_blocking_schedule_runs_until_stop() -> None:
    # pykit's schedule() blocks its thread; stop() (new) ends it from anywhere.
    holder: list[JobScheduler] = []

    def job() -> None:
        tasks.CALLS.append(("job", (), {}))
        holder[0].stop()

    sched = JobScheduler({"once": {"func": job, "every": [1, "day"]}})
    holder.append(sched)
    with trio.fail_after(20):
        await trio.to_thread.run_sync(sched.schedule)
    assert tasks.CALLS == [("job", (), {})]


async def test_run_twice_at_once_is_refused(nursery: trio.Nursery) -> None:
    sched = JobScheduler({})
    await nursery.start(sched.run)
    with pytest.raises(RuntimeError, match="already running"):
        await sched.run()
