"""The schedule as files: job validation, the TOML file, the state file,
`serve_schedule` across a restart, and `gloom schedule list`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
import threading
from typing import Any

import pytest
import trio
import trio.testing

from gloomd.scheduler import (
    BackgroundWriter,
    JobScheduler,
    StateFile,
    serve_schedule,
)
from gloomd.scheduler.config import build_job, default_state_path, load_schedule_file
from gloomd.scheduler.firetime import JobConfigError, NextFireTimeError
from gloomd.scheduler.listing import main as listing_main
from gloomd.scheduler.listing import rows

from .schedjobs import tasks

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    tasks.CALLS.clear()


def ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


# --- one job's conf --------------------------------------------------------------------

EVERY = {"every": [1, "hour"]}


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({**EVERY}, "exactly one of func and submit"),
        ({**EVERY, "func": print, "submit": {"type": "t"}}, "exactly one of func and submit"),
        ({**EVERY, "func": 42}, "func must be callable"),
        ({**EVERY, "func": "no_colon_here"}, "package.module:function"),
        ({**EVERY, "func": "tests.services.scheduler.schedjobs.nope:record"}, "cannot import"),
        ({**EVERY, "func": "tests.services.scheduler.schedjobs.tasks:missing"}, "has no 'missing'"),
        (
            {**EVERY, "func": "tests.services.scheduler.schedjobs.tasks:NOT_CALLABLE"},
            "not callable",
        ),
        ({**EVERY, "func": print, "args": "abc"}, "args must be a list"),
        ({**EVERY, "func": print, "kwargs": [1]}, "kwargs must be a table"),
        ({**EVERY, "func": print, "concurrence_n": 0}, "concurrence_n"),
        ({**EVERY, "func": print, "concurrence_n": True}, "concurrence_n"),
        ({**EVERY, "submit": "report"}, "submit must be a table"),
        ({**EVERY, "submit": {"body": 1}}, "submit needs a type"),
        ({**EVERY, "submit": {"type": "t", "prio": 1}}, "unknown keys in submit: prio"),
        ({**EVERY, "submit": {"type": "t", "priority": 1.0}}, "submit.priority"),
        ({**EVERY, "submit": {"type": "t", "priority": True}}, "submit.priority"),
        ({**EVERY, "submit": {"type": "t", "timeout": 0}}, "submit.timeout"),
        ({**EVERY, "submit": {"type": "t", "timeout": "1"}}, "submit.timeout"),
        ({"every": [1, "lightyear"], "func": print}, "unknown unit"),
    ],
)
def test_bad_job_conf_names_the_job(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(JobConfigError, match=message) as info:
        build_job("nightly", conf)
    assert str(info.value).startswith("job 'nightly': ")


def test_never_advancing_job_stays_a_next_fire_time_error() -> None:
    with pytest.raises(NextFireTimeError, match="job 'x'"):
        build_job("x", {"func": print, "every": [1, "day"], "at": {"day": 3}})


def test_func_by_name_resolves_nested_attributes() -> None:
    spec = build_job(
        "n",
        {"func": "tests.services.scheduler.schedjobs.tasks:Namespace.nested", "every": [1, "day"]},
    )
    assert spec.func is tasks.Namespace.nested
    assert spec.target == "tests.services.scheduler.schedjobs.tasks:Namespace.nested"
    assert spec.args == () and spec.kwargs == {}


async def refuse_submit(job_id: str, job_type: Any, body: Any, **options: Any) -> Any:
    raise AssertionError("this test submits nothing")


def test_submit_job_needs_a_submit_callable() -> None:
    with pytest.raises(JobConfigError, match="need the scheduler's submit"):
        JobScheduler({"r": {"submit": {"type": "report"}, "every": [1, "hour"]}})
    sched = JobScheduler(
        {"r": {"submit": {"type": "report"}, "every": [1, "hour"]}}, submit=refuse_submit
    )
    spec = sched.jobs["r"]
    assert spec.submit is not None and (
        spec.submit.body,
        spec.submit.priority,
        spec.submit.timeout,
    ) == (None, 0, None)


# --- the TOML file ---------------------------------------------------------------------

SCHEDULE = """
[jobs.nightly]
func = "tests.services.scheduler.schedjobs.tasks:record_async"
args = ["nightly"]
every = [1, "day"]
at = { hour = 3, minute = 30, second = 0 }
timezone = "Europe/Berlin"

[jobs.frequent]
func = "tests.services.scheduler.schedjobs.tasks:record_async"
args = ["frequent"]
every = [1, "hour"]
timezone = "UTC"

[jobs.report]
submit = { type = "report", body = { kind = "hourly" }, priority = 5, timeout = 600 }
every = [1, "hour"]
at = { minute = 0, second = 0 }
timezone = "utc"
"""


def write(tmp_path: pathlib.Path, text: str, name: str = "jobs.toml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_schedule_file(tmp_path: pathlib.Path) -> None:
    jobs = load_schedule_file(write(tmp_path, SCHEDULE))
    assert list(jobs) == ["nightly", "frequent", "report"]
    assert jobs["report"]["submit"] == {
        "type": "report",
        "body": {"kind": "hourly"},
        "priority": 5,
        "timeout": 600,
    }
    assert default_state_path(tmp_path / "jobs.toml") == tmp_path / "jobs.state.json"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[jobs.a\n", "not valid TOML"),
        ("[job.a]\nevery = [1, 'day']\n", "unknown top-level keys"),
        ("jobs = 3\n", "must be a \\[jobs.NAME\\] table"),
        ("[jobs]\na = 1\n", "must be a \\[jobs.NAME\\] table"),
    ],
)
def test_bad_schedule_file(tmp_path: pathlib.Path, text: str, message: str) -> None:
    with pytest.raises(JobConfigError, match=message):
        load_schedule_file(write(tmp_path, text))


# --- the state file ---------------------------------------------------------------------


def test_state_file_round_trip_is_atomic(tmp_path: pathlib.Path) -> None:
    state = StateFile(tmp_path / "s.json")
    assert state.reload() is None
    status = {"j": {"active_threads": {}, "log": ["a"], "message": "", "big": 2**70}}
    state.dump(status)
    state.dump(status)
    assert state.reload() == status
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]  # no temp file left behind


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_unreadable_state_file_is_ignored(
    tmp_path: pathlib.Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR):
        assert StateFile(path).reload() is None
    assert "starting afresh" in caplog.text


async def test_background_writer_coalesces_and_flushes_on_cancel() -> None:
    gate = threading.Event()
    caught_up = trio.Event()
    written: list[dict[str, Any]] = []

    def write(status: dict[str, Any]) -> None:  # runs in a worker thread
        gate.wait(timeout=20)
        written.append(status)
        if status["n"] == 3:
            trio.from_thread.run_sync(caught_up.set)

    writer = BackgroundWriter(write)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.submit({"n": 1})
        await trio.testing.wait_all_tasks_blocked()  # the writer is in its thread, at the gate
        writer.submit({"n": 2})
        writer.submit({"n": 3})  # supersedes 2 before it is written
        gate.set()
        with trio.fail_after(10):
            await caught_up.wait()
        writer.submit({"n": 4})
        nursery.cancel_scope.cancel()  # 4 is still written, on the way out
    assert written == [{"n": 1}, {"n": 3}, {"n": 4}]


# --- serve_schedule across a restart ---------------------------------------------------


async def start_and_settle(path: pathlib.Path, **kwargs: Any) -> None:
    """Run serve_schedule until every task is idle, then stop it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_schedule(path, task_status=task_status, **kwargs)
        )
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_serve_schedule_keeps_state_and_does_not_refire_after_restart(
    tmp_path: pathlib.Path,
) -> None:
    # Real clock: serve_schedule reads time.time().  The hourly job fires at
    # start-up; a restart a moment later must not fire it again.
    schedule = SCHEDULE.split("[jobs.report]")[0]
    path = write(tmp_path, schedule)
    await start_and_settle(path)
    assert tasks.CALLS == [("record_async", ("frequent",), {})]
    state = json.loads((tmp_path / "jobs.state.json").read_text())
    assert set(state) == {"nightly", "frequent"}
    frequent = state["frequent"]
    assert frequent["next_fire_time"]["ts"] == pytest.approx(frequent["fire_time"]["ts"] + 3600)
    assert frequent["active_threads"] == {} and any("finished" in line for line in frequent["log"])
    assert state["nightly"]["next_fire_time"]["string"].endswith(
        ("03:30:00+01:00", "03:30:00+02:00")
    )

    await start_and_settle(path)
    assert tasks.CALLS == [("record_async", ("frequent",), {})]
    assert (
        json.loads((tmp_path / "jobs.state.json").read_text())["frequent"]["fire_time"]
        == frequent["fire_time"]
    )


async def test_serve_schedule_with_explicit_state_path(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, SCHEDULE.split("[jobs.report]")[0])
    await start_and_settle(path, state_path=tmp_path / "elsewhere.json")
    assert (tmp_path / "elsewhere.json").exists() and not (tmp_path / "jobs.state.json").exists()


async def test_serve_schedule_refuses_an_invalid_file(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        "[jobs.bad]\nfunc = 'tests.services.scheduler.schedjobs.tasks:record'\n"
        "every = [1, 'hour']\nat = { hour = 2 }\n",
    )
    with pytest.raises(NextFireTimeError):
        await serve_schedule(path)


# --- gloom schedule list --------------------------------------------------------------


def test_list_rows_from_state(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, SCHEDULE)
    spec = build_job("nightly", load_schedule_file(path)["nightly"], resolve_func=False)
    StateFile(tmp_path / "jobs.state.json").dump(
        {
            "nightly": {
                "active_threads": {"sched:nightly:1": {}},
                "log": [],
                "message": "failed: ValueError: boom",
                "fire_time": {"ts": ts("2018-03-25T03:30:00+02:00"), "string": ""},
                "next_fire_time": {"ts": ts("2018-03-26T03:30:00+02:00"), "string": ""},
                "schedule": spec.schedule_key,
            },
            "report": {"next_fire_time": {"ts": 0.0}, "schedule": "every 9 day [utc]"},
        }
    )
    table = {row["name"]: row for row in rows(path, now=ts("2018-03-25T12:00:00+00:00"))}
    nightly = table["nightly"]
    assert nightly["last"] == "2018-03-25 03:30:00 CEST"
    assert nightly["next"] == "2018-03-26 03:30:00 CEST"
    assert nightly["running"] == "1"
    assert nightly["message"] == "failed: ValueError: boom"
    assert nightly["schedule"] == "every 1 day at hour=3,minute=30,second=0 [Europe/Berlin]"
    assert table["frequent"]["last"] == "never"
    assert table["frequent"]["next"] == "2018-03-25 12:00:00 UTC (if started now)"
    # a status made for another schedule is not trusted
    assert table["report"]["next"] == "2018-03-25 12:00:00 UTC (if started now)"
    assert table["report"]["target"] == "submit type='report'"


def test_list_main_prints_a_table(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SCHEDULE)
    state = tmp_path / "custom.json"
    StateFile(state).dump(
        {"frequent": {"message": "[bold]not markup[/bold]", "fire_time": {"ts": 1e9}}}
    )
    assert listing_main(["--schedule", str(path), "--schedule-state", str(state)]) == 0
    out = capsys.readouterr().out
    for text in (
        "nightly",
        "frequent",
        "report",
        "[bold]not markup[/bold]",
        "2001-09-09 01:46:40 UTC",
        "[Europe/Berlin]",
        "[utc]",
    ):
        assert text in out


def test_list_main_reports_a_bad_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert listing_main(["--schedule", str(tmp_path / "missing.toml")]) == 2
    assert "gloom schedule list:" in capsys.readouterr().err
