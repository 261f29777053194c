"""When does a scheduled job fire next?  Pure calendar arithmetic, no I/O.

The rule is pykit's jobscheduler rule, "last + n units, then the `at` fields
written over it", with its time-zone and calendar bugs fixed.  Stated exactly,
so that a test table can pin every case:

* Without `at`, seconds, minutes, hours, days and weeks are fixed lengths added
  to the epoch timestamp: a daily job keeps 24 h spacing across a DST change,
  as in pykit.  Months are calendar months in the job's zone (Jan 31 + 1 month
  is Feb 28/29, wall time kept).
* With `at`, `last` is read as a wall time in the job's zone (`timezone`, else
  the machine's zone).  Seconds, minutes and hours are still added as fixed
  lengths; days, weeks and months are added on the calendar.  Then the `at`
  fields are written over the result, a `day` past the month's end is clamped
  to the month's last day, and the microseconds are zeroed (an `at` job fires
  on whole seconds).
* A wall time that does not exist (DST gap) moves forward by the gap (02:30 on
  the spring-forward night in Berlin is 03:30 CEST).  An ambiguous wall time
  (DST fold) is its first occurrence, unless that one is not after `last`: then
  it is the second.  That exception is what lets an hourly `at: {minute: 30}`
  job fire at both 01:30 EDT and 01:30 EST in New York instead of stopping.
* The result must be after `last`, else `NextFireTimeError`.

Validation happens once, when a job is added (`parse_timing`), so that a job
that could never advance is refused up front rather than at 3 a.m.: every
`at` field must be finer than the `every` unit (`at.hour` with `every` in
hours would write the hour straight back), and `n` must be a whole number
whenever the calendar is involved.

Two choices go beyond pykit and are stated here because the scheduler relies
on them: the first fire of an `at` job is the earliest instant, at or after
start-up, at which the `at` fields hold (`first_fire_ts`), and after missed
slots the job continues from "now" instead of catching up one slot at a time
(`resume_fire_ts`).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pendulum
import pendulum.tz

__all__ = [
    "AT_FIELDS",
    "MAX_INTERVAL_SECONDS",
    "MAX_MONTHS",
    "MAX_TS",
    "MIN_INTERVAL_SECONDS",
    "UNITS",
    "JobConfigError",
    "NextFireTimeError",
    "ScheduleError",
    "TimeInfo",
    "Timing",
    "first_fire_ts",
    "get_next_fire_time",
    "is_fire_ts",
    "next_fire_ts",
    "parse_timing",
    "resolve_zone",
    "resume_fire_ts",
    "short_repr",
    "time_info",
    "wall_time",
]


class ScheduleError(Exception):
    """Base of the scheduler's errors."""


class JobConfigError(ScheduleError, ValueError):
    """A job's configuration is malformed (unknown unit or key, value out of range...)."""


class NextFireTimeError(JobConfigError):
    """The computed next fire time is not after the last one.

    Raised when a job is added whose `every`/`at` pair can never advance, and,
    as in pykit, by `get_next_fire_time` when the result is not after `last`.
    """


class TimeInfo(TypedDict):
    """pykit's time-info: epoch seconds and a readable ISO 8601 string.

    The string is in the job's own zone (pykit used the machine's zone, which
    made a Berlin job's status unreadable on a Shanghai host).
    """

    ts: float
    string: str


UNITS = ("second", "minute", "hour", "day", "week", "month")
_FIXED_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800}

#: The range of `every`.  Outside it a job passed validation but could never
#: fire: `[1e-9, "second"]` adds less than a float's resolution to today's
#: timestamp (the next fire time equals the last one), and `[10**12, "day"]`
#: lands beyond the year 9999 that datetimes can show.  Both logged a traceback
#: every minute, for ever.  The floor is the same as the websocket service's
#: shortest report interval; the ceiling, ten years and some days, keeps every
#: fire time for the next seven millennia representable.
MIN_INTERVAL_SECONDS = 0.01
MAX_INTERVAL_SECONDS = 3660 * 86400
MAX_MONTHS = 120
#: Latest epoch second a datetime can show (9999-12-31T23:59:59 UTC).
MAX_TS = 253402300799.0


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() for an error message: at most `limit` characters, and never an error.

    A TOML file can hold an integer of thousands of digits, whose repr is a
    wall of text, or fails outright past Python's 4,300-digit conversion limit.
    """
    try:
        text = repr(value)
    except ValueError:
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_fire_ts(value: Any) -> bool:
    """A number that can be a fire time: finite, from the epoch to the year 9999.

    Timestamps read back from a status file are checked with this: one outside
    the range would make the scheduler wait for ever, or a listing fail to print it.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return 0 <= value <= MAX_TS  # False for NaN; inf and huge ints are out of range


#: `at` fields, finest first, with their allowed ranges.
AT_FIELDS = ("second", "minute", "hour", "day")
_AT_RANGE = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day": (1, 31)}
_FIELD_RANK = {"second": 0, "minute": 1, "hour": 2, "day": 3}
# The calendar field each unit steps; an `at` field must be strictly finer.
_UNIT_RANK = {"second": 0, "minute": 1, "hour": 2, "day": 3, "week": 3, "month": 4}
# The period that encloses an `at` field: where the next match is searched.
_ENCLOSING = {"second": "minute", "minute": "hour", "hour": "day", "day": "month"}


def resolve_zone(name: str | None) -> _dt.tzinfo:
    """The job's zone: an IANA name, "utc" in any case, or None for the machine's zone.

    pytz accepted "utc" in lower case and pykit configurations rely on it;
    zoneinfo does not, hence the special case.
    """
    if name is None:
        return pendulum.tz.get_local_timezone()
    if not isinstance(name, str):
        raise JobConfigError(f"timezone must be a string, got {name!r}")
    if name.lower() == "utc":
        return pendulum.UTC
    try:
        return pendulum.Timezone(name)
    except (ValueError, OSError) as exc:
        raise JobConfigError(f"unknown timezone {name!r}") from exc


@dataclass(frozen=True)
class Timing:
    """The validated `every`/`at`/`timezone` of one job."""

    n: int | float
    unit: str
    at: tuple[tuple[str, int], ...]  # (field, value), finest field first
    zone_name: str | None
    tz: _dt.tzinfo = field(compare=False, repr=False)

    @property
    def at_dict(self) -> dict[str, int]:
        return dict(self.at)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_timing(conf: Mapping[str, Any]) -> Timing:
    """Validate a job conf's `every`, `at` and `timezone`.

    Raises `JobConfigError` for malformed values and `NextFireTimeError` for an
    `every`/`at` pair that could never advance.
    """
    every = conf.get("every")
    if not isinstance(every, (list, tuple)) or len(every) != 2:
        raise JobConfigError(f"every must be [n, unit], got {short_repr(every)}")
    n, unit = every
    if unit not in _UNIT_RANK:
        raise JobConfigError(f"unknown unit {unit!r} in every; expected one of {', '.join(UNITS)}")
    # isfinite only for floats: an integer too big for a float would raise OverflowError.
    if not _is_number(n) or (isinstance(n, float) and not math.isfinite(n)) or n <= 0:
        raise JobConfigError(f"every needs a positive number, got {short_repr(n)}")
    _check_interval(every, n, unit)

    raw_at = conf.get("at")
    if raw_at is None:
        raw_at = {}
    if not isinstance(raw_at, Mapping):
        raise JobConfigError(f"at must be a table of {', '.join(AT_FIELDS)}, got {raw_at!r}")
    at: list[tuple[str, int]] = []
    for key, value in raw_at.items():
        if key not in _AT_RANGE:
            raise JobConfigError(f"unknown key {key!r} in at; expected {', '.join(AT_FIELDS)}")
        low, high = _AT_RANGE[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise JobConfigError(
                f"at.{key} must be an integer in {low}..{high}, got {short_repr(value)}"
            )
        if _FIELD_RANK[key] >= _UNIT_RANK[unit]:
            raise NextFireTimeError(
                f"at.{key} with every {list(every)!r} can never advance: "
                f"the fields in at must be finer than the unit {unit!r}"
            )
        at.append((key, value))
    at.sort(key=lambda item: _FIELD_RANK[item[0]])

    # A calendar step (months always, days/weeks when `at` reads the wall
    # clock) has no meaning for a fractional n, and a fractional step under
    # an `at` field would make the result wander inside its period.
    if (unit == "month" or at) and not float(n).is_integer():
        raise JobConfigError(f"every {list(every)!r}: n must be a whole number here")
    if unit == "month" or at:
        n = int(n)

    zone_name = conf.get("timezone")
    tz = resolve_zone(zone_name)
    return Timing(n=n, unit=unit, at=tuple(at), zone_name=zone_name, tz=tz)


def _check_interval(every: Any, n: int | float, unit: str) -> None:
    """`every` within MIN_INTERVAL_SECONDS..MAX_INTERVAL_SECONDS (months: 1..MAX_MONTHS)."""
    if unit == "month":
        # Whole months only (checked by the caller); n < 1 is a fraction.
        if n <= MAX_MONTHS:
            return
    else:
        seconds = n * _FIXED_SECONDS[unit]  # exact for ints, however large
        if MIN_INTERVAL_SECONDS <= seconds <= MAX_INTERVAL_SECONDS:
            return
    raise JobConfigError(
        f"every {short_repr(list(every))} is out of range: from {MIN_INTERVAL_SECONDS:g} seconds"
        f" to {MAX_INTERVAL_SECONDS // 86400} days ({MAX_MONTHS} months)"
    )


# --- wall-clock helpers -------------------------------------------------------


def wall_time(ts: float, tz: _dt.tzinfo) -> _dt.datetime:
    """The naive wall-clock time that `tz` shows at epoch `ts`."""
    return _dt.datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def _occurrences(wall: _dt.datetime, tz: _dt.tzinfo) -> tuple[float, ...]:
    """Epoch times at which `tz` shows `wall`, per the gap/fold policy.

    One value for a normal time and for a gap (the wall time read with the
    offset before the gap, i.e. moved forward by the gap); two, in order, for a
    fold.  zoneinfo's fold=0/fold=1 readings give exactly these.
    """
    first = wall.replace(tzinfo=tz, fold=0).timestamp()
    second = wall.replace(tzinfo=tz, fold=1).timestamp()
    if first < second:
        return (first, second)
    return (first,)


def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _add_months(wall: _dt.datetime, months: int) -> _dt.datetime:
    """Calendar months on a naive wall time; the day is clamped to the month's end."""
    moved = pendulum.naive(
        wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, wall.microsecond
    ).add(months=months)
    return _dt.datetime(
        moved.year, moved.month, moved.day, moved.hour, moved.minute, moved.second,
        moved.microsecond,
    )  # fmt: skip


def _write_at(wall: _dt.datetime, at: tuple[tuple[str, int], ...]) -> _dt.datetime:
    fields = {"day": wall.day, "hour": wall.hour, "minute": wall.minute, "second": wall.second}
    fields.update(at)
    day = min(fields["day"], _days_in_month(wall.year, wall.month))
    return _dt.datetime(
        wall.year, wall.month, day, fields["hour"], fields["minute"], fields["second"]
    )


def _step_wall(wall: _dt.datetime, unit: str, n: int) -> _dt.datetime:
    if unit == "month":
        return _add_months(wall, n)
    if unit == "week":
        return wall + _dt.timedelta(weeks=n)
    if unit == "day":
        return wall + _dt.timedelta(days=n)
    # minute/hour as enclosing periods: naive arithmetic on purpose, so the
    # search visits each wall-clock hour once and the gap/fold policy decides.
    return wall + _dt.timedelta(seconds=n * _FIXED_SECONDS[unit])


# --- the computations -----------------------------------------------------------


def next_fire_ts(timing: Timing, last_ts: float) -> float:
    """The fire time following `last_ts`, per the rule in the module docstring."""
    n, unit, at, tz = timing.n, timing.unit, timing.at, timing.tz
    try:
        if not at:
            if unit != "month":
                result = last_ts + n * _FIXED_SECONDS[unit]
            else:
                wall = _add_months(wall_time(last_ts, tz), int(n))
                result = _pick_after(_occurrences(wall, tz), last_ts)
        else:
            if unit in ("second", "minute", "hour"):
                wall = wall_time(last_ts + n * _FIXED_SECONDS[unit], tz)
            else:
                wall = _step_wall(wall_time(last_ts, tz), unit, int(n))
            result = _pick_after(_occurrences(_write_at(wall, at), tz), last_ts)
    except (OverflowError, ValueError, OSError) as exc:
        # Years beyond 9999 or timestamps the platform cannot represent.
        raise NextFireTimeError(f"next fire time after {last_ts!r} is out of range: {exc}") from exc
    if not result > last_ts:
        raise NextFireTimeError(
            f"next fire time: {time_info(result, tz)}, is not after last fire ts: {last_ts!r}, "
            f"timing: {timing!r}"
        )
    return result


def _pick_after(occurrences: tuple[float, ...], after: float) -> float:
    for ts in occurrences:
        if ts > after:
            return ts
    return occurrences[-1]


def first_fire_ts(timing: Timing, now_ts: float) -> float:
    """When a job first fires after start-up.

    Without `at`: now (pykit fires such a job at once).  With `at`: the earliest
    instant at or after `now_ts` at which the `at` fields hold, searched in the
    period that encloses the coarsest `at` field (the next minute, hour, day or
    month), so a daily `at: {hour: 3}` job started at 02:00 fires in an hour.
    """
    if not timing.at:
        return now_ts
    tz = timing.tz
    coarsest = timing.at[-1][0]
    period = _ENCLOSING[coarsest]
    wall = wall_time(now_ts, tz)
    # Two periods always suffice (this one, else the next); a third guards
    # against a gap swallowing a whole period.
    for _ in range(3):
        for ts in _occurrences(_write_at(wall, timing.at), tz):
            if ts >= now_ts:
                return ts
        wall = _step_wall(wall, period, 1)
    raise NextFireTimeError(f"no fire time found after {now_ts!r} for {timing!r}")


def resume_fire_ts(timing: Timing, scheduled_ts: float, now_ts: float) -> float:
    """The next fire time after a fire that was due at `scheduled_ts` and ran at `now_ts`.

    Anchored on the scheduled time so that wake-up latency never drifts a job;
    but when that next slot has already passed too (downtime, a filtered or
    skipped period), the job continues from now: at most one late fire, never
    a catch-up burst.
    """
    following = next_fire_ts(timing, scheduled_ts)
    if following > now_ts:
        return following
    if not timing.at:
        return next_fire_ts(timing, now_ts)
    upcoming = first_fire_ts(timing, now_ts)
    return upcoming if upcoming > now_ts else next_fire_ts(timing, upcoming)


def time_info(ts: float, tz: _dt.tzinfo) -> TimeInfo:
    """pykit's time-info for `ts`, its string in `tz`."""
    return {"ts": float(ts), "string": _dt.datetime.fromtimestamp(ts, tz).isoformat()}


def get_next_fire_time(conf: Mapping[str, Any], last_fire_ts: float) -> TimeInfo:
    """pykit-compatible: the next fire time after `last_fire_ts` as a time-info dict."""
    timing = parse_timing(conf)
    return time_info(next_fire_ts(timing, last_fire_ts), timing.tz)
