"""Issue 18: every numeric field of a schedule entry has a range, checked when it is loaded.

Before, `every = [10**12, "day"]` and `[1e-9, "second"]` passed validation; the
first landed beyond the year 9999 and the second added less than a float's
resolution to the last fire time, so neither ever fired and the scheduler
logged a traceback every minute, for ever.  TOML also reads `inf`, `nan` and
`1e400` (as inf), and integers of any length.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Any

import pytest
import trio

from gloomd.scheduler import JobScheduler, StateFile, serve_schedule
from gloomd.scheduler.config import build_job, load_schedule_file
from gloomd.scheduler.firetime import (
    MAX_INTERVAL_SECONDS,
    MAX_MONTHS,
    MAX_TS,
    MIN_INTERVAL_SECONDS,
    JobConfigError,
    is_fire_ts,
    parse_timing,
)
from gloomd.scheduler.listing import rows

pytestmark = pytest.mark.timeout(30)

OUT_OF_RANGE = [
    [10**12, "day"],
    [1e-9, "second"],
    [0.009, "second"],
    [1e-7, "day"],  # 0.00864 s
    [MAX_INTERVAL_SECONDS + 1, "second"],
    [3661, "day"],
    [523, "week"],
    [87841, "hour"],
    [MAX_MONTHS + 1, "month"],
    [10**400, "month"],  # before: OverflowError (not a JobConfigError) from isfinite()
    [10**400, "second"],
    [1.7976931348623157e308, "minute"],
]


@pytest.mark.parametrize("every", OUT_OF_RANGE, ids=[repr(e)[:40] for e in OUT_OF_RANGE])
def test_every_out_of_range_is_refused(every: list[Any]) -> None:
    with pytest.raises(JobConfigError, match=r"out of range: from 0\.01 seconds to 3660 days"):
        parse_timing({"every": every, "timezone": "UTC"})


@pytest.mark.parametrize(
    "every",
    [[MIN_INTERVAL_SECONDS, "second"], [0.5, "second"], [3660, "day"], [522, "week"],
     [MAX_INTERVAL_SECONDS, "second"], [MAX_MONTHS, "month"], [1, "month"]],
)  # fmt: skip
def test_every_at_the_bounds_is_accepted(every: list[Any]) -> None:
    assert parse_timing({"every": every, "timezone": "UTC"}).unit == every[1]


def test_the_ceiling_keeps_fire_times_representable_for_millennia() -> None:
    # A job at the ceiling, fired today, gets a next fire time a datetime can show.
    assert time.time() + MAX_INTERVAL_SECONDS < MAX_TS / 20


@pytest.mark.parametrize(
    ("submit", "message"),
    [
        ({"type": "t", "priority": 2**63}, "submit.priority must be an integer from -2\\*\\*63"),
        ({"type": "t", "priority": -(2**63) - 1}, "submit.priority"),
        ({"type": "t", "priority": 10**5000}, "an integer of 16610 bits"),
        ({"type": "t", "timeout": float("nan")}, "submit.timeout"),
        ({"type": "t", "timeout": float("inf")}, "submit.timeout"),
        ({"type": "t", "timeout": MAX_INTERVAL_SECONDS + 1}, "at most 316224000"),
        (
            {"type": "t", "body": {"x": [1, float("inf")]}},
            "submit.body holds inf, which JSON cannot carry",
        ),
        ({"type": "t", "body": float("nan")}, "submit.body holds nan"),
        ({"type": ["a", float("-inf")]}, "submit.type holds -inf"),
    ],
)
def test_submit_numbers_out_of_range_are_refused(submit: dict[str, Any], message: str) -> None:
    with pytest.raises(JobConfigError, match=message) as info:
        build_job("report", {"submit": submit, "every": [1, "hour"]})
    assert str(info.value).startswith("job 'report': ")


def test_deep_submit_body_is_refused() -> None:
    body: Any = 1
    for _ in range(300):
        body = [body]
    with pytest.raises(JobConfigError, match="nested deeper than 254"):
        build_job("deep", {"submit": {"type": "t", "body": body}, "every": [1, "hour"]})


def test_concurrence_n_has_a_ceiling() -> None:
    assert (
        build_job("j", {"func": print, "every": [1, "hour"], "concurrence_n": 1000}).concurrence_n
        == 1000
    )
    with pytest.raises(
        JobConfigError, match="job 'j': concurrence_n must be an integer from 1 to 1000"
    ):
        build_job("j", {"func": print, "every": [1, "hour"], "concurrence_n": 1001})


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'every = [1000000000000, "day"]',
            "job 'bad': every \\[1000000000000, 'day'\\] is out of range",
        ),
        ('every = [1e-9, "second"]', "job 'bad': every \\[1e-09, 'second'\\] is out of range"),
        ('every = [inf, "hour"]', "job 'bad': every needs a positive number, got inf"),
        ('every = [nan, "hour"]', "job 'bad': every needs a positive number, got nan"),
        (
            'every = [1, "hour"]\nsubmit = { type = "t", body = { x = 1e400 } }',
            "submit.body holds inf",
        ),
        ('every = [1, "hour"]\nsubmit = { type = "t", timeout = inf }', "submit.timeout"),
        (
            'every = [1, "hour"]\nsubmit = { type = "t", priority = 99999999999999999999 }',
            "submit.priority",
        ),
    ],
)
async def test_schedule_file_out_of_range_fails_before_the_scheduler_starts(
    tmp_path: pathlib.Path, entry: str, message: str
) -> None:
    submit = "" if "submit" in entry else 'submit = { type = "t" }\n'
    path = write(tmp_path, f"[jobs.bad]\n{submit}{entry}\n")
    with pytest.raises(JobConfigError, match=message):
        await serve_schedule(path, submit=refuse_submit)


async def refuse_submit(job_id: str, job_type: Any, body: Any, **options: Any) -> Any:
    raise AssertionError("the file is refused before anything is submitted")


def test_an_integer_too_long_for_python_is_a_toml_error(tmp_path: pathlib.Path) -> None:
    # tomllib lets a plain ValueError through for it; before, so did we.
    path = write(
        tmp_path, f'[jobs.bad]\nsubmit = {{ type = "t" }}\nevery = [{"9" * 5000}, "second"]\n'
    )
    with pytest.raises(JobConfigError, match="not valid TOML"):
        load_schedule_file(path)


def test_gloomd_with_an_out_of_range_schedule_exits_instead_of_logging_for_ever(
    tmp_path: pathlib.Path,
) -> None:
    # Before: gloomd started, printed its ready line, and logged
    # "scheduling job huge failed" with a traceback every minute.
    path = write(tmp_path, '[jobs.huge]\nsubmit = { type = "t" }\nevery = [1000000000000, "day"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "gloomd", "--master-port", "0", "--slave-port", "0",
         "--schedule", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert "gloomd ready" not in done.stdout
    assert "job 'huge': every [1000000000000, 'day'] is out of range" in done.stderr


# --- fire times read back from a status file -------------------------------------------


@pytest.mark.parametrize("value", [0, 1.7e9, MAX_TS])
def test_fire_ts_range_accepts(value: float) -> None:
    assert is_fire_ts(value)


@pytest.mark.parametrize(
    "value", [-1, MAX_TS + 1, 1e300, float("inf"), float("nan"), 10**400, True, "1", None]
)
def test_fire_ts_range_refuses(value: Any) -> None:
    assert not is_fire_ts(value)


def _status_with_next_fire(ts: float) -> dict[str, Any]:
    return {"job": {"next_fire_time": {"ts": ts, "string": "?"}, "schedule": "every 1 hour [UTC]"}}


def test_a_next_fire_time_past_year_9999_in_the_status_file_is_recomputed(
    tmp_path: pathlib.Path,
) -> None:
    state = tmp_path / "jobs.state.json"
    state.write_text(json.dumps(_status_with_next_fire(1e300)))
    path = write(
        tmp_path,
        '[jobs.job]\nfunc = "tests.services.scheduler.schedjobs.tasks:record"\n'
        'every = [1, "hour"]\ntimezone = "UTC"\n',
    )
    # `gloom schedule list`: before, fromtimestamp(1e300) failed and the listing with it.
    (row,) = rows(path, state, now=1.7e9)
    assert row["next"].endswith("(if started now)")
    # The scheduler: before, it kept the reloaded time and would wait until then.
    sched = JobScheduler(
        {"job": {"func": print, "every": [1, "hour"], "timezone": "UTC"}},
        reload_status=StateFile(state).reload,
        wall_clock=lambda: 1.7e9,
    )
    assert "next_fire_time" not in sched.status_snapshot()["job"]


async def test_a_reloaded_next_fire_time_in_range_is_kept(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "jobs.state.json"
    state.write_text(json.dumps(_status_with_next_fire(1.7e9 + 60)))
    sched = JobScheduler(
        {"job": {"func": print, "every": [1, "hour"], "timezone": "UTC"}},
        reload_status=StateFile(state).reload,
        wall_clock=lambda: 1.7e9,
    )
    assert sched.status_snapshot()["job"]["next_fire_time"]["ts"] == 1.7e9 + 60
    await trio.lowlevel.checkpoint()
