"""Next-fire computation: tables of hand-worked cases, then properties.

Expected values are written as wall times with their UTC offset in the job's
zone, worked out from the rules in gloomd/firetime.py's docstring (and, for
DST, from the zones' published transitions), not by running the code.
Every case names its zone: nothing here depends on the host's zone except the
test that pins the local zone on purpose.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gloomd.scheduler.firetime import (
    JobConfigError,
    NextFireTimeError,
    first_fire_ts,
    get_next_fire_time,
    next_fire_ts,
    parse_timing,
    resume_fire_ts,
)

pytestmark = pytest.mark.timeout(60)

BER = "Europe/Berlin"
NY = "America/New_York"


def ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def job(
    every: list[Any], at: dict[str, int] | None = None, tz: str | None = "UTC"
) -> dict[str, Any]:
    conf: dict[str, Any] = {"every": every}
    if at is not None:
        conf["at"] = at
    if tz is not None:
        conf["timezone"] = tz
    return conf


def chain(conf: dict[str, Any], last: str, n: int) -> list[str]:
    """The next `n` fire times after `last`, as strings in the job's zone."""
    out, cur = [], ts(last)
    for _ in range(n):
        info = get_next_fire_time(conf, cur)
        out.append(info["string"])
        cur = info["ts"]
    return out


NO_AT_CASES = [
    # every unit as a fixed length (months on the calendar)
    (
        job([10, "second"]),
        "2020-01-01T00:00:00+00:00",
        ["2020-01-01T00:00:10+00:00", "2020-01-01T00:00:20+00:00"],
    ),
    (
        job([1.5, "second"]),
        "2020-01-01T00:00:00+00:00",
        ["2020-01-01T00:00:01.500000+00:00", "2020-01-01T00:00:03+00:00"],
    ),
    (job([5, "minute"]), "2020-01-01T23:58:00+00:00", ["2020-01-02T00:03:00+00:00"]),
    (job([2, "hour"]), "2020-02-28T23:00:00+00:00", ["2020-02-29T01:00:00+00:00"]),
    (job([7, "day"]), "2020-02-25T06:00:00+00:00", ["2020-03-03T06:00:00+00:00"]),
    (job([2, "week"]), "2020-12-25T06:00:00+00:00", ["2021-01-08T06:00:00+00:00"]),
    # a daily job without `at` keeps 24 h spacing across DST, as pykit
    (
        job([1, "day"], tz=BER),
        "2018-03-24T12:00:00+01:00",
        ["2018-03-25T13:00:00+02:00", "2018-03-26T13:00:00+02:00"],
    ),
    (job([1, "week"], tz=NY), "2018-10-31T09:00:00-04:00", ["2018-11-07T08:00:00-05:00"]),
    (
        job([1, "hour"], tz=BER),
        "2018-10-28T01:30:00+02:00",
        ["2018-10-28T02:30:00+02:00", "2018-10-28T02:30:00+01:00", "2018-10-28T03:30:00+01:00"],
    ),
    # months are calendar months in the job's zone, wall time kept, day clamped
    (
        job([1, "month"], tz=BER),
        "2018-01-31T10:00:00+01:00",
        ["2018-02-28T10:00:00+01:00", "2018-03-28T10:00:00+02:00"],
    ),
    (
        job([1, "month"]),
        "2024-01-31T00:00:00+00:00",
        ["2024-02-29T00:00:00+00:00", "2024-03-29T00:00:00+00:00"],
    ),
    (job([1, "month"]), "2023-01-31T00:00:00+00:00", ["2023-02-28T00:00:00+00:00"]),
    (job([12, "month"]), "2024-02-29T12:00:00+00:00", ["2025-02-28T12:00:00+00:00"]),
    (job([1, "month"], tz=NY), "2019-02-10T02:30:00-05:00", ["2019-03-10T03:30:00-04:00"]),
]

AT_CASES = [
    # pykit: "last + interval, then `at` written over" may be one second later
    (
        job([1, "hour"], {"minute": 0, "second": 0}),
        "2020-01-01T15:59:59+00:00",
        ["2020-01-01T16:00:00+00:00", "2020-01-01T17:00:00+00:00"],
    ),
    (
        job([30, "minute"], {"second": 0}),
        "2020-01-01T12:00:00+00:00",
        ["2020-01-01T12:30:00+00:00"],
    ),
    (
        job([1, "minute"], {"second": 30}),
        "2020-01-01T12:00:45+00:00",
        ["2020-01-01T12:01:30+00:00"],
    ),
    (job([1, "day"], {"minute": 15}), "2020-01-01T10:40:00+00:00", ["2020-01-02T10:15:00+00:00"]),
    (
        job([2, "day"], {"hour": 23, "minute": 59, "second": 59}),
        "2020-02-28T23:59:59+00:00",
        ["2020-03-01T23:59:59+00:00"],
    ),
    (
        job([1, "hour"], {"minute": 0}),
        "2020-01-01T10:00:00.250000+00:00",
        ["2020-01-01T11:00:00+00:00"],
    ),
    # the hour is the zone's wall hour, not UTC's
    (
        job([1, "hour"], {"minute": 0, "second": 0}, "Asia/Kolkata"),
        "2020-01-01T10:00:00+05:30",
        ["2020-01-01T11:00:00+05:30"],
    ),
    # reference vector 1: pykit gave 11:00 CET here (stale offset)
    (
        job([1, "month"], {"day": 24, "hour": 12, "minute": 0, "second": 0}, BER),
        "2018-02-24T12:00:00+01:00",
        ["2018-03-24T12:00:00+01:00", "2018-04-24T12:00:00+02:00"],
    ),
    (
        job([1, "day"], {"hour": 12}, BER),
        "2018-03-24T12:00:00+01:00",
        ["2018-03-25T12:00:00+02:00"],
    ),
    # DST gap moves forward by the gap (reference vector 2), then back to 02:30
    (
        job([1, "day"], {"hour": 2, "minute": 30, "second": 0}, BER),
        "2018-03-24T02:30:00+01:00",
        ["2018-03-25T03:30:00+02:00", "2018-03-26T02:30:00+02:00"],
    ),
    (
        job([1, "day"], {"hour": 2, "minute": 30, "second": 0}, NY),
        "2019-03-09T02:30:00-05:00",
        ["2019-03-10T03:30:00-04:00", "2019-03-11T02:30:00-04:00"],
    ),
    (
        job([1, "month"], {"hour": 2, "minute": 30, "second": 0}, BER),
        "2018-02-25T02:30:00+01:00",
        ["2018-03-25T03:30:00+02:00", "2018-04-25T02:30:00+02:00"],
    ),
    (
        job([1, "hour"], {"minute": 0, "second": 0}, BER),
        "2018-03-25T01:00:00+01:00",
        ["2018-03-25T03:00:00+02:00", "2018-03-25T04:00:00+02:00"],
    ),
    # DST fold: a daily job takes the first occurrence, once
    (
        job([1, "day"], {"hour": 2, "minute": 30, "second": 0}, BER),
        "2018-10-27T02:30:00+02:00",
        ["2018-10-28T02:30:00+02:00", "2018-10-29T02:30:00+01:00"],
    ),
    (
        job([1, "day"], {"hour": 1, "minute": 30, "second": 0}, NY),
        "2018-11-03T01:30:00-04:00",
        ["2018-11-04T01:30:00-04:00", "2018-11-05T01:30:00-05:00"],
    ),
    # ...an hourly job fires in both occurrences of the repeated hour
    (
        job([1, "hour"], {"minute": 30}, NY),
        "2018-11-04T00:30:00-04:00",
        ["2018-11-04T01:30:00-04:00", "2018-11-04T01:30:00-05:00", "2018-11-04T02:30:00-05:00"],
    ),
    (
        job([1, "hour"], {"minute": 0, "second": 0}, BER),
        "2018-10-28T01:00:00+02:00",
        ["2018-10-28T02:00:00+02:00", "2018-10-28T02:00:00+01:00", "2018-10-28T03:00:00+01:00"],
    ),
    # weeks are calendar weeks when `at` is given: 09:00 stays 09:00 across DST
    (
        job([1, "week"], {"hour": 9, "minute": 0, "second": 0}, BER),
        "2018-03-21T09:00:00+01:00",
        ["2018-03-28T09:00:00+02:00"],
    ),
    (
        job([1, "day"], {"hour": 9}, "US/Pacific"),
        "2020-03-07T09:00:00-08:00",
        ["2020-03-08T09:00:00-07:00"],
    ),
    # month ends: `day` past the end clamps to the last day, every month
    (
        job([1, "month"], {"day": 31, "hour": 0, "minute": 0, "second": 0}),
        "2021-01-31T00:00:00+00:00",
        [
            "2021-02-28T00:00:00+00:00",
            "2021-03-31T00:00:00+00:00",
            "2021-04-30T00:00:00+00:00",
            "2021-05-31T00:00:00+00:00",
        ],
    ),
    (
        job([3, "month"], {"day": 30}),
        "2018-06-30T00:00:00+00:00",
        ["2018-09-30T00:00:00+00:00"],
    ),  # pykit: 2018-10-30
    (
        job([1, "month"], {"day": 30}),
        "2018-01-30T08:00:00+00:00",
        ["2018-02-28T08:00:00+00:00", "2018-03-30T08:00:00+00:00"],
    ),
    # leap years
    (job([1, "month"], {"day": 29}), "2024-01-29T08:00:00+00:00", ["2024-02-29T08:00:00+00:00"]),
    (job([1, "month"], {"day": 29}), "2023-01-29T08:00:00+00:00", ["2023-02-28T08:00:00+00:00"]),
    (job([1, "month"], {"day": 29}), "2100-01-29T08:00:00+00:00", ["2100-02-28T08:00:00+00:00"]),
    (job([1, "month"], {"day": 29}), "2000-01-29T08:00:00+00:00", ["2000-02-29T08:00:00+00:00"]),
    (
        job([12, "month"], {"day": 29}),
        "2024-02-29T08:00:00+00:00",
        [
            "2025-02-28T08:00:00+00:00",
            "2026-02-28T08:00:00+00:00",
            "2027-02-28T08:00:00+00:00",
            "2028-02-29T08:00:00+00:00",
        ],
    ),
    (
        job([1, "day"], {"hour": 0, "minute": 0, "second": 0}),
        "2024-02-28T00:00:00+00:00",
        ["2024-02-29T00:00:00+00:00", "2024-03-01T00:00:00+00:00"],
    ),
]


@pytest.mark.parametrize(("conf", "last", "expected"), NO_AT_CASES + AT_CASES)
def test_next_fire_table(conf: dict[str, Any], last: str, expected: list[str]) -> None:
    assert chain(conf, last, len(expected)) == expected


@pytest.mark.parametrize("name", ["utc", "UTC", "Utc", "uTC"])
def test_utc_in_any_case(name: str) -> None:
    conf = job([1, "day"], {"hour": 5, "minute": 0, "second": 0}, name)
    assert chain(conf, "2020-01-01T05:00:00+00:00", 1) == ["2020-01-02T05:00:00+00:00"]


def test_time_info_shape() -> None:
    info = get_next_fire_time(job([1, "hour"], {"minute": 0}, BER), ts("2018-07-01T10:00:00+02:00"))
    assert info == {"ts": ts("2018-07-01T11:00:00+02:00"), "string": "2018-07-01T11:00:00+02:00"}
    assert isinstance(info["ts"], float)


def test_at_without_timezone_uses_the_local_zone() -> None:
    pendulum.set_local_timezone(pendulum.timezone(NY))
    try:
        conf = job([1, "day"], {"hour": 2, "minute": 30, "second": 0}, tz=None)
        assert chain(conf, "2019-03-09T02:30:00-05:00", 1) == ["2019-03-10T03:30:00-04:00"]
    finally:
        pendulum.set_local_timezone()


# --- validation --------------------------------------------------------------------

NEVER_ADVANCE = [
    ([1, "second"], {"second": 0}),
    ([90, "second"], {"second": 0}),
    ([1, "minute"], {"minute": 0}),
    ([2, "hour"], {"hour": 3}),
    ([1, "hour"], {"day": 1}),
    ([1, "day"], {"day": 1}),
    ([1, "week"], {"day": 1, "hour": 0}),
]


@pytest.mark.parametrize(("every", "at"), NEVER_ADVANCE)
def test_pair_that_can_never_advance_is_refused_up_front(
    every: list[Any], at: dict[str, int]
) -> None:
    with pytest.raises(NextFireTimeError, match="can never advance"):
        parse_timing(job(every, at))


BAD = [
    {"every": [0, "second"]},
    {"every": [-1, "day"]},
    {"every": [float("nan"), "hour"]},
    {"every": [float("inf"), "hour"]},
    {"every": ["1", "hour"]},
    {"every": [True, "hour"]},
    {"every": [1, "year"]},
    {"every": [1, "hours"]},
    {"every": [1]},
    {"every": 3600},
    {},
    {"every": [1.5, "month"]},
    {"every": [1.5, "day"], "at": {"hour": 1}},
    {"every": [1, "day"], "at": {"month": 1}},
    {"every": [1, "day"], "at": {"microsecond": 1}},
    {"every": [1, "day"], "at": {"hour": 24}},
    {"every": [1, "day"], "at": {"minute": 60}},
    {"every": [1, "day"], "at": {"second": -1}},
    {"every": [1, "month"], "at": {"day": 0}},
    {"every": [1, "month"], "at": {"day": 32}},
    {"every": [1, "day"], "at": {"hour": 1.5}},
    {"every": [1, "day"], "at": {"hour": True}},
    {"every": [1, "day"], "at": {"hour": "3"}},
    {"every": [1, "day"], "at": [3, 0]},
    {"every": [1, "day"], "at": {"hour": 3}, "timezone": "Mars/Olympus_Mons"},
    {"every": [1, "day"], "timezone": 8},
]


@pytest.mark.parametrize("conf", BAD)
def test_malformed_timing_is_a_config_error(conf: dict[str, Any]) -> None:
    with pytest.raises(JobConfigError):
        parse_timing(conf)


def test_get_next_fire_time_raises_when_not_after_last() -> None:
    # pykit's rule survives for out-of-range results: a year past 9999.
    with pytest.raises(NextFireTimeError):
        get_next_fire_time(job([1, "month"], {"day": 1}), ts("9999-12-15T00:00:00+00:00"))


# --- first fire and resuming after a gap ---------------------------------------------


FIRST_CASES = [
    (
        job([1, "day"], {"hour": 3, "minute": 0, "second": 0}, BER),
        "2018-03-25T01:00:00+01:00",
        "2018-03-25T03:00:00+02:00",
    ),
    (
        job([1, "day"], {"hour": 3, "minute": 0, "second": 0}, BER),
        "2018-03-25T03:00:00+02:00",
        "2018-03-25T03:00:00+02:00",
    ),
    (
        job([1, "day"], {"hour": 3, "minute": 0, "second": 0}, BER),
        "2018-03-25T03:00:01+02:00",
        "2018-03-26T03:00:00+02:00",
    ),
    (
        job([2, "day"], {"hour": 12, "minute": 0, "second": 0}),
        "2020-01-01T13:00:00+00:00",
        "2020-01-02T12:00:00+00:00",
    ),
    (
        job([1, "month"], {"day": 31, "hour": 0, "minute": 0, "second": 0}),
        "2021-04-10T00:00:00+00:00",
        "2021-04-30T00:00:00+00:00",
    ),
    (
        job([1, "month"], {"day": 31, "hour": 0, "minute": 0, "second": 0}),
        "2021-04-30T00:00:01+00:00",
        "2021-05-31T00:00:00+00:00",
    ),
    (
        job([1, "month"], {"day": 1, "hour": 0, "minute": 0, "second": 0}),
        "2020-12-31T23:00:00+00:00",
        "2021-01-01T00:00:00+00:00",
    ),
    (
        job([1, "hour"], {"minute": 0, "second": 0}, NY),
        "2018-11-04T01:30:00-04:00",
        "2018-11-04T01:00:00-05:00",
    ),
    (
        job([1, "hour"], {"minute": 30, "second": 0}, BER),
        "2018-03-25T01:45:00+01:00",
        "2018-03-25T03:30:00+02:00",
    ),
    (
        job([1, "hour"], {"second": 0}),
        "2020-01-01T10:17:33.500000+00:00",
        "2020-01-01T10:18:00+00:00",
    ),
]


@pytest.mark.parametrize(("conf", "now", "expected"), FIRST_CASES)
def test_first_fire_is_the_earliest_match_at_or_after_now(
    conf: dict[str, Any], now: str, expected: str
) -> None:
    timing = parse_timing(conf)
    assert first_fire_ts(timing, ts(now)) == ts(expected)


def test_first_fire_without_at_is_now() -> None:
    assert first_fire_ts(parse_timing(job([1, "day"])), 1234.5) == 1234.5


def test_resume_is_anchored_on_the_scheduled_time_when_on_time() -> None:
    timing = parse_timing(job([10, "minute"]))
    assert resume_fire_ts(timing, 6000.0, 6000.02) == 6600.0


def test_resume_after_downtime_continues_from_now() -> None:
    timing = parse_timing(job([10, "minute"]))
    assert resume_fire_ts(timing, 6000.0, 9605.0) == 10205.0
    daily = parse_timing(job([1, "day"], {"hour": 12, "minute": 0, "second": 0}, BER))
    scheduled = ts("2020-06-01T12:00:00+02:00")
    assert resume_fire_ts(daily, scheduled, ts("2020-06-04T15:00:00+02:00")) == ts(
        "2020-06-05T12:00:00+02:00"
    )
    # woke before today's slot: today's slot, not a whole day later
    assert resume_fire_ts(daily, scheduled, ts("2020-06-04T11:00:00+02:00")) == ts(
        "2020-06-04T12:00:00+02:00"
    )
    # exactly on today's slot: that one has just fired, so tomorrow
    assert resume_fire_ts(daily, scheduled, ts("2020-06-04T12:00:00+02:00")) == ts(
        "2020-06-05T12:00:00+02:00"
    )


# --- properties ----------------------------------------------------------------------

ZONES = [
    "UTC",
    BER,
    NY,
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
    "Asia/Shanghai",
]
_RANK = {"second": 0, "minute": 1, "hour": 2, "day": 3, "week": 3, "month": 4}
_FIELDS = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day": (1, 31)}
_FIELD_RANK = {"second": 0, "minute": 1, "hour": 2, "day": 3}
# 1971..2099: inside every platform's and every zone database's range
_TS = st.floats(min_value=40_000_000, max_value=4_000_000_000, allow_nan=False)


@st.composite
def timings(draw: st.DrawFn) -> dict[str, Any]:
    unit = draw(st.sampled_from(["second", "minute", "hour", "day", "week", "month"]))
    allowed = [f for f in _FIELDS if _FIELD_RANK[f] < _RANK[unit]]
    fields = draw(st.lists(st.sampled_from(allowed), unique=True)) if allowed else []
    at = {f: draw(st.integers(*_FIELDS[f])) for f in fields}
    if at or unit == "month":
        n: int | float = draw(st.integers(1, 40))
    else:
        # From the documented floor, MIN_INTERVAL_SECONDS (0.01 s), upwards.
        n = draw(st.one_of(st.integers(1, 500), st.floats(0.01, 500)))
    conf: dict[str, Any] = {"every": [n, unit], "timezone": draw(st.sampled_from(ZONES))}
    if at:
        conf["at"] = at
    return conf


def at_fields_hold(result: float, conf: dict[str, Any]) -> bool:
    """The `at` fields hold in the job's zone at `result`.

    In a DST gap the wall time moved forward by the gap, so the fields hold
    when the result is read with the offset from before the transition.
    """
    tz = pendulum.timezone(conf["timezone"])
    at = conf.get("at", {})

    def holds(wall: dt.datetime) -> bool:
        if wall.microsecond:
            return False
        last_day = pendulum.date(wall.year, wall.month, 1).days_in_month
        want = {k: (min(v, last_day) if k == "day" else v) for k, v in at.items()}
        return all(getattr(wall, k) == v for k, v in want.items())

    here = dt.datetime.fromtimestamp(result, tz)
    before = dt.datetime.fromtimestamp(result - 3 * 3600, tz).utcoffset()
    assert before is not None
    shifted = dt.datetime.fromtimestamp(result, dt.timezone(before))
    return holds(here) or holds(shifted)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conf=timings(), last=_TS)
def test_property_next_is_after_last_and_at_fields_hold(conf: dict[str, Any], last: float) -> None:
    timing = parse_timing(conf)
    result = next_fire_ts(timing, last)
    assert result > last
    if "at" in conf:
        assert at_fields_hold(result, conf)
    elif conf["every"][1] != "month":
        factor = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}
        assert result == pytest.approx(last + conf["every"][0] * factor[conf["every"][1]])
    else:
        # calendar months: between n*28 and n*31 days later (plus a DST hour)
        n = conf["every"][0]
        assert n * 28 * 86400 - 3600 <= result - last <= n * 31 * 86400 + 3600


@settings(max_examples=300, deadline=None)
@given(conf=timings(), now=_TS)
def test_property_first_fire_is_soon_and_matches(conf: dict[str, Any], now: float) -> None:
    timing = parse_timing(conf)
    first = first_fire_ts(timing, now)
    assert first >= now
    if "at" in conf:
        assert at_fields_hold(first, conf)
        coarsest = max(conf["at"], key=lambda f: _FIELD_RANK[f])
        period = {"second": 60, "minute": 3600, "hour": 86400, "day": 31 * 86400}[coarsest]
        assert first - now <= period + 3600
    resumed = resume_fire_ts(timing, now - 10 * 86400, first)
    assert resumed > first
