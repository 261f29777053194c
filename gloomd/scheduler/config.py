"""Scheduled jobs as configuration: validation of one job, and the TOML file.

A job is validated once, when it is added, into a `JobSpec`; the scheduler
never looks at a raw conf again except to hand it to the `filter_job`
callback (which is why extra keys such as `roles` are kept).  Checking up
front is the point: pykit discovered a bad `at` or a missing `args` in the
job's thread at fire time, possibly weeks later.

The TOML file holds one table per job under `[jobs]`:

    [jobs.cleanup]
    func = "mypkg.tasks:cleanup"        # "module:attribute"
    args = [7]
    every = [1, "day"]
    at = { hour = 3, minute = 30, second = 0 }
    timezone = "Europe/Berlin"

    [jobs.report]
    submit = { type = "report", body = { kind = "hourly" }, priority = 5, timeout = 600 }
    every = [1, "hour"]
    at = { minute = 0, second = 0 }

A `submit` table may also set the job lifecycle's keys for the jobs it
submits (`delay`, `retries`, `backoff`, `unique`), with the daemon's ranges.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pathlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gloomwire.codec import MAX_DEPTH

from ..messages import MAX_TIMEOUT
from .firetime import MAX_INTERVAL_SECONDS, JobConfigError, Timing, parse_timing, short_repr

__all__ = [
    "MAX_CONCURRENCE_N",
    "MAX_SUBMIT_BACKOFF",
    "MAX_SUBMIT_DELAY",
    "MAX_SUBMIT_RETRIES",
    "MAX_SUBMIT_TIMEOUT",
    "PRIORITY_RANGE",
    "JobSpec",
    "SubmitSpec",
    "build_job",
    "default_state_path",
    "describe_timing",
    "load_schedule_file",
    "resolve_callable",
    "unique_id",
]

_AT_ORDER = ("second", "minute", "hour", "day")
_SUBMIT_KEYS = frozenset(
    {"type", "body", "priority", "timeout", "delay", "retries", "backoff", "unique"}
)

# The ranges of a job's numeric fields (`every` and `at` have theirs in
# firetime).  TOML gives integers of any size and the floats inf and nan; a
# value outside these ranges is refused when the file is loaded, naming the
# job, instead of failing at every fire.
#: Runs of one job at the same time.
MAX_CONCURRENCE_N = 1000
#: A Gloom priority travels as a JSON integer; gloomd compares it as a signed 64-bit one.
PRIORITY_RANGE = (-(2**63), 2**63 - 1)
#: Seconds; the same ceiling as `every`: a timeout beyond it can only be a mistake.
MAX_SUBMIT_TIMEOUT = float(MAX_INTERVAL_SECONDS)
# The job lifecycle's keys take the ranges gloomd checks on every submit
# (lifecycle.md, "Validation"), so that a file gloomd would refuse at every
# fire is refused once, at load.
#: Seconds a submitted job may be held back: gloomd's one year.
MAX_SUBMIT_DELAY = float(MAX_TIMEOUT)
#: Retries of one job.
MAX_SUBMIT_RETRIES = 1000
#: Seconds of the first retry's back-off (each later one doubles, capped at this too).
MAX_SUBMIT_BACKOFF = 3600.0


@dataclass(frozen=True)
class SubmitSpec:
    """A gloomd job to submit at each fire (Gloom's submit frame, plus gloomd's keys).

    `delay`, `retries` and `backoff` are None unless the file set them (then
    they are not sent); `unique` makes every fire submit the same id,
    `unique_id(name)`, so that a fire while that job is live attaches to it.
    """

    type: Any
    body: Any = None
    priority: int = 0
    timeout: float | None = None
    delay: float | None = None
    retries: int | None = None
    backoff: float | None = None
    unique: bool = False

    def lifecycle(self) -> dict[str, Any]:
        """The lifecycle keys to send with each submit: only those that were set."""
        keys: dict[str, Any] = {}
        if self.delay is not None:
            keys["delay"] = self.delay
        if self.retries is not None:
            keys["retries"] = self.retries
        if self.backoff is not None:
            keys["backoff"] = self.backoff
        if self.unique:
            keys["unique"] = True
        return keys


def unique_id(name: str) -> str:
    """The id every fire of a `unique` submit job uses: ``sched:NAME``.

    Other fires use ``sched:NAME:EPOCH:RANDOM``, an id of their own, which
    could never meet an earlier fire's job.
    """
    return f"sched:{name}"


@dataclass(frozen=True)
class JobSpec:
    """One validated job.

    Exactly one of `func` and `submit` is set.  `func_ref` keeps the
    "module:attribute" text of a function named in a file, for display.
    """

    name: str
    conf: Mapping[str, Any] = field(repr=False)
    timing: Timing
    concurrence_n: int = 1
    func: Callable[..., Any] | None = None
    func_ref: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    submit: SubmitSpec | None = None

    @property
    def is_async(self) -> bool:
        """Awaited in the scheduler's trio run rather than sent to a worker thread."""
        func = self.func
        if func is None:
            return False
        # inspect sees through functools.partial; a callable object is async
        # when its __call__ is.
        return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)

    @functools.cached_property
    def schedule_key(self) -> str:
        """What decides the fire times; a reloaded next fire time is kept only if it matches."""
        return describe_timing(self.timing)

    @property
    def target(self) -> str:
        """One-line description of what a fire does."""
        if self.submit is not None:
            return f"submit type={self.submit.type!r}"
        if self.func_ref is not None:
            return self.func_ref
        func = self.func
        return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"


def describe_timing(timing: Timing) -> str:
    """`every 1 hour at minute=0,second=0 [Europe/Berlin]`: readable and stable."""
    n = timing.n
    text = f"every {n:g} {timing.unit}" if isinstance(n, float) else f"every {n} {timing.unit}"
    if timing.at:
        fields = sorted(timing.at, key=lambda item: -_AT_ORDER.index(item[0]))
        text += " at " + ",".join(f"{key}={value}" for key, value in fields)
    return f"{text} [{timing.zone_name or 'local'}]"


def resolve_callable(ref: str) -> Callable[..., Any]:
    """Import "package.module:attribute" (the attribute may be dotted)."""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise JobConfigError(f"func must look like 'package.module:function', got {ref!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobConfigError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise JobConfigError(f"func {ref!r}: {module_name} has no {attr_path!r}") from None
    if not callable(obj):
        raise JobConfigError(f"func {ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _parse_submit(raw: Any) -> SubmitSpec:
    if not isinstance(raw, Mapping):
        raise JobConfigError(
            "submit must be a table with type, body, priority, timeout (and delay, retries,"
            f" backoff, unique); got {short_repr(raw)}"
        )
    unknown = set(raw) - _SUBMIT_KEYS
    if unknown:
        raise JobConfigError(f"unknown keys in submit: {', '.join(sorted(map(str, unknown)))}")
    if "type" not in raw:
        raise JobConfigError("submit needs a type")
    priority = raw.get("priority", 0)
    low, high = PRIORITY_RANGE
    if not isinstance(priority, int) or isinstance(priority, bool) or not low <= priority <= high:
        raise JobConfigError(
            f"submit.priority must be an integer from -2**63 to 2**63-1, got {short_repr(priority)}"
        )
    timeout = raw.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_SUBMIT_TIMEOUT  # False for NaN
    ):
        raise JobConfigError(
            f"submit.timeout must be a number of seconds above 0 and at most"
            f" {MAX_SUBMIT_TIMEOUT:.0f}, got {short_repr(timeout)}"
        )
    for key in ("type", "body"):
        if key in raw:
            _check_wire_value(f"submit.{key}", raw[key])
    return SubmitSpec(
        type=raw["type"], body=raw.get("body"), priority=priority, timeout=timeout,
        **_parse_lifecycle(raw),
    )  # fmt: skip


def _parse_lifecycle(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`delay`, `retries`, `backoff`, `unique` of a submit table, in gloomd's check order."""
    keys: dict[str, Any] = {}
    delay = raw.get("delay")
    if delay is not None:
        if not _is_number(delay) or not 0 <= delay <= MAX_SUBMIT_DELAY:  # False for NaN
            raise JobConfigError(
                f"submit.delay must be a number of seconds from 0 to {MAX_SUBMIT_DELAY:.0f},"
                f" got {short_repr(delay)}"
            )
        keys["delay"] = delay
    retries = raw.get("retries")
    if retries is not None:
        if type(retries) is not int or not 0 <= retries <= MAX_SUBMIT_RETRIES:
            raise JobConfigError(
                f"submit.retries must be an integer from 0 to {MAX_SUBMIT_RETRIES},"
                f" got {short_repr(retries)}"
            )
        keys["retries"] = retries
    backoff = raw.get("backoff")
    if backoff is not None:
        if not _is_number(backoff) or not 0 < backoff <= MAX_SUBMIT_BACKOFF:
            raise JobConfigError(
                f"submit.backoff must be a number of seconds above 0 and at most"
                f" {MAX_SUBMIT_BACKOFF:.0f}, got {short_repr(backoff)}"
            )
        keys["backoff"] = backoff
    unique = raw.get("unique", False)
    if type(unique) is not bool:
        raise JobConfigError(f"submit.unique must be true or false, got {short_repr(unique)}")
    keys["unique"] = unique
    return keys


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _check_wire_value(where: str, value: Any) -> None:
    """Refuse what the Gloom wire cannot carry: inf and nan, and nesting past MAX_DEPTH.

    (TOML writes inf, nan, and 1e400 which it reads as inf; JSON has none of them.)
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise JobConfigError(f"{where} holds {short_repr(item)}, which JSON cannot carry")
        if isinstance(item, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise JobConfigError(f"{where} is nested deeper than {MAX_DEPTH} levels")
            children = item.values() if isinstance(item, Mapping) else item
            stack.extend((child, depth + 1) for child in children)


def build_job(name: str, conf: Mapping[str, Any], *, resolve_func: bool = True) -> JobSpec:
    """Validate one job conf (pykit's keys plus `submit`).

    `args` and `kwargs` default to empty (pykit required them and failed at
    fire time when they were missing).  With `resolve_func=False` a
    "module:function" string is checked for shape only, so that `gloom
    schedule list` never imports the jobs' code.
    """
    if not isinstance(name, str) or not name:
        raise JobConfigError(f"job name must be a non-empty string, got {name!r}")
    if not isinstance(conf, Mapping):
        raise JobConfigError(f"job {name!r}: conf must be a table, got {short_repr(conf)}")
    try:
        timing = parse_timing(conf)
        has_func, has_submit = conf.get("func") is not None, conf.get("submit") is not None
        if has_func == has_submit:
            raise JobConfigError("give exactly one of func and submit")
        concurrence_n = conf.get("concurrence_n", 1)
        if (
            not isinstance(concurrence_n, int)
            or isinstance(concurrence_n, bool)
            or not 1 <= concurrence_n <= MAX_CONCURRENCE_N
        ):
            raise JobConfigError(
                f"concurrence_n must be an integer from 1 to {MAX_CONCURRENCE_N},"
                f" got {short_repr(concurrence_n)}"
            )
        args = conf.get("args", [])
        kwargs = conf.get("kwargs", {})
        if not isinstance(args, (list, tuple)):
            raise JobConfigError(f"args must be a list, got {short_repr(args)}")
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise JobConfigError(
                f"kwargs must be a table with string keys, got {short_repr(kwargs)}"
            )
        if has_submit:
            return JobSpec(
                name=name, conf=conf, timing=timing, concurrence_n=concurrence_n,
                submit=_parse_submit(conf["submit"]),
            )  # fmt: skip
        func = conf["func"]
        func_ref = None
        if isinstance(func, str):
            func_ref = func
            if resolve_func:
                func = resolve_callable(func)
            elif ":" not in func:
                raise JobConfigError(f"func must look like 'package.module:function', got {func!r}")
            else:
                func = None
        elif not callable(func):
            raise JobConfigError(
                f"func must be callable or 'module:function', got {short_repr(func)}"
            )
        return JobSpec(
            name=name, conf=conf, timing=timing, concurrence_n=concurrence_n, func=func,
            func_ref=func_ref, args=tuple(args), kwargs=dict(kwargs),
        )  # fmt: skip
    except JobConfigError as exc:
        # Name the job once, whatever part of it was wrong; keep the class
        # (NextFireTimeError must stay NextFireTimeError).
        if str(exc).startswith(f"job {name!r}"):
            raise
        raise type(exc)(f"job {name!r}: {exc}") from exc


def load_schedule_file(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """Read the `[jobs.NAME]` tables of a schedule TOML file (not validated yet).

    Errors do not repeat the path: the caller names the file (`gloomd:
    --schedule jobs.toml: not valid TOML: ...`).  A file that cannot be
    read raises OSError.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except ValueError as exc:
        # TOMLDecodeError, or the plain ValueError tomllib lets through for an
        # integer past Python's 4,300-digit conversion limit.
        raise JobConfigError(f"not valid TOML: {exc}") from exc
    unknown = set(data) - {"jobs"}
    if unknown:
        raise JobConfigError(
            f"unknown top-level keys {sorted(unknown)}; put jobs under [jobs.NAME]"
        )
    jobs = data.get("jobs", {})
    if not isinstance(jobs, dict) or not all(isinstance(v, dict) for v in jobs.values()):
        raise JobConfigError("each job must be a [jobs.NAME] table")
    return jobs


def default_state_path(schedule_path: pathlib.Path) -> pathlib.Path:
    """Where the status of FILE.toml is kept unless told otherwise: FILE.state.json."""
    return schedule_path.with_suffix(".state.json")
