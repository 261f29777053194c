"""The scheduler: jobs every N units at set times in any zone, as a trio service.

A port of pykit's `jobscheduler` with its API (`JobScheduler`, `add_job`,
`delete_job`, `get_next_fire_time`, `NextFireTimeError`, `JobExistError`,
the status dict and its `dump_status`/`reload_status` callbacks) and the
fixes listed in the reference:

* no one-minute tick: the loop sleeps until the earliest next fire time
  (`trio.sleep_until`-style, monotonic clock) and wakes at once on add/delete;
* next fire times come from `firetime` (pendulum zones, calendar
  months, explicit DST rules), and a job is validated when it is added;
* the next fire time is computed before the job is launched, so a failure can
  never leave it stale, and missed slots are fired at most once (no catch-up
  burst);
* a run is registered before it starts, so `concurrence_n` cannot be raced;
* the status handed to `dump_status` is a snapshot, never the live dict, and a
  reloaded status is validated field by field.

A fire runs the job's function in a trio worker thread (or awaits it, for an
`async def`), or submits a job to gloomd (`submit`), which is how scheduled
work reaches slaves on any host.  Submitting goes through a callable handed
to the scheduler (`Submit`): in the daemon, `gloomd.local.LocalMaster.call`,
straight into its own broker.  Either way a failure is logged with its
traceback and kept in the job's status `message`; it never stops the loop.

Wall clock versus trio clock: fire times are epoch seconds, but sleeping is on
trio's clock.  Each wake re-reads `wall_clock()` and sleeps at most
`max_sleep` seconds, so a wall-clock step (NTP, suspend) is noticed within a
minute, while tests drive both clocks with a `MockClock`.
"""

from __future__ import annotations

import copy
import functools
import heapq
import inspect
import itertools
import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio

from gloomwire import codec
from gloomwire.logformat import event

from .config import JobSpec, build_job, unique_id
from .firetime import (
    JobConfigError,
    ScheduleError,
    first_fire_ts,
    is_fire_ts,
    resume_fire_ts,
    time_info,
)
from .state import StatusDict

__all__ = ["FILTERED_MESSAGE", "JobExistError", "JobScheduler", "Submit"]

# The scheduler's logger as a whole: operators filter on "gloomd.scheduler".
log = logging.getLogger("gloomd.scheduler")

#: A wake-up this close to a fire time counts as on time (float rounding of
#: the wall-to-trio clock translation must not cause a busy loop).
_EPSILON = 1e-6

FILTERED_MESSAGE = "this job does not need to run here (filter_job)"


class JobExistError(ScheduleError, KeyError):
    """`add_job` was given the name of a job that already exists."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Submit(Protocol):
    """How `submit` jobs reach gloomd: submit one job, return its result body.

    Raises when the job is refused or ends in `job_error`/`job_failed`; the
    scheduler records the exception as the run's failure.  In the daemon it
    is `gloomd.local.LocalMaster.call`.

    The lifecycle's keys (`delay`, `retries`, `backoff`, `unique`) are passed
    only when the job's `submit` table sets them, so a `Submit` written
    before them keeps working for jobs that do not; with `unique`, the
    scheduler also passes `on_attached`, to be called once if gloomd's ack
    says the submit attached to a live job.
    """

    def __call__(
        self,
        job_id: str,
        job_type: Any,
        body: Any,
        *,
        priority: int = 0,
        timeout: float | None = None,
        delay: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        unique: bool = False,
        on_attached: Callable[[], object] | None = None,
    ) -> Awaitable[Any]: ...


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = codec.dumps(value).decode("utf-8", "replace")
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _debug_traceback(exc: BaseException) -> BaseException | None:
    """`exc` when the log is at debug, else None: a failure is one line at
    info, the line with its traceback at debug (the status keeps it anyway)."""
    return exc if log.isEnabledFor(logging.DEBUG) else None


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _is_time_info(value: Any) -> bool:
    # A reloaded next fire time in the year 30000 would park the job for ever.
    return isinstance(value, dict) and is_fire_ts(value.get("ts"))


class JobScheduler:
    """Fire jobs every N units, optionally at set wall-clock fields, in any zone.

    :param jobs: `{name: conf}`; conf keys are pykit's (`func`, `args`,
        `kwargs`, `every`, `at`, `timezone`, `concurrence_n`, plus any extra
        keys for the filter) or `submit: {type, body, priority, timeout}`
        instead of `func`.  Every job is validated here; a bad one raises
        `JobConfigError` (or `NextFireTimeError` for an `every`/`at` pair that
        can never advance).  As in pykit, a missing `concurrence_n` is written
        into the caller's conf as 1.
    :param dump_status: called with a snapshot `{name: status}` whenever a
        status changed (after a fire, a finished run, an add or a delete).
        Treat it as read-only: to keep a dump cheap with many jobs, the
        entries of jobs that did not change are shared between successive
        snapshots (never with the live status).
    :param reload_status: called once, here; returns a previous snapshot (or
        None).  It is validated field by field; runs that were active are
        recorded as aborted by the restart.
    :param filter_job: called with a job's conf when it is due; a falsy answer
        skips that fire ("not on this host").  `should_job_run` is accepted as
        an alias, the name pykit's code actually used.
    :param submit: how `submit` jobs reach gloomd (see `Submit`); needed by them.
    :param wall_clock: epoch seconds now; `time.time` unless a test drives it.
    :param max_sleep: longest sleep between wall-clock reads, in seconds.
    """

    def __init__(
        self,
        jobs: Mapping[str, Mapping[str, Any]] | None = None,
        dump_status: Callable[[StatusDict], Any] | None = None,
        reload_status: Callable[[], StatusDict | None] | None = None,
        filter_job: Callable[[Mapping[str, Any]], Any] | None = None,
        *,
        should_job_run: Callable[[Mapping[str, Any]], Any] | None = None,
        submit: Submit | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_sleep: float = 60.0,
    ) -> None:
        if filter_job is not None and should_job_run is not None:
            raise TypeError("give filter_job or should_job_run, not both")
        self._filter = filter_job if filter_job is not None else should_job_run
        self._dump_status = dump_status
        self._submit = submit
        self._wall_clock = wall_clock
        self.max_sleep = max_sleep
        # Guards jobs and status against add_job/delete_job from other threads
        # (pykit's usage: schedule() blocks one thread, others add jobs).
        self._lock = threading.RLock()
        self._jobs: dict[str, JobSpec] = {}
        self._status: StatusDict = {}
        # Scheduling queue: (next fire ts, sequence number, name); see _tick.
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, int] = {}
        self._seq = itertools.count()
        # Jobs not yet given a next fire time (new, or all of them at start).
        self._fresh: set[str] = set()
        # Snapshot cache: a deep copy of each job's status, refreshed only for
        # the jobs in _changed, so a dump costs O(changed jobs), not O(jobs).
        self._snap: dict[str, dict[str, Any]] = {}
        self._changed: set[str] = set()
        self._dirty = False
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._cancel_scope: trio.CancelScope | None = None

        for name, conf in (jobs or {}).items():
            self._jobs[name] = self._build(name, conf)
        self._status = self._reload(reload_status)
        self._fresh.update(self._jobs)
        self._changed.update(self._jobs)

    # --- jobs -------------------------------------------------------------------

    def _build(self, name: str, conf: Mapping[str, Any]) -> JobSpec:
        spec = build_job(name, conf)
        if spec.submit is not None and self._submit is None:
            raise JobConfigError(f"job {name!r}: submit jobs need the scheduler's submit")
        if isinstance(conf, dict):
            conf.setdefault("concurrence_n", spec.concurrence_n)
        return spec

    @property
    def jobs(self) -> dict[str, JobSpec]:
        with self._lock:
            return dict(self._jobs)

    def add_job(self, name: str, conf: Mapping[str, Any]) -> None:
        """Add a job; it is scheduled at once (the loop wakes up).  Thread-safe."""
        spec = self._build(name, conf)
        with self._lock:
            if name in self._jobs:
                raise JobExistError(f"job: {name} already exists")
            self._jobs[name] = spec
            self._status[name] = self._new_status()
            self._fresh.add(name)
            self._touch(name)
        self._poke()

    def delete_job(self, name: str) -> None:
        """Remove a job and its status; unknown names are ignored, as in pykit.

        Runs already started are not stopped; they finish unrecorded.
        """
        with self._lock:
            found = self._jobs.pop(name, None) is not None
            self._due.pop(name, None)
            self._fresh.discard(name)
            found = self._status.pop(name, None) is not None or found
            self._changed.discard(name)
            self._snap.pop(name, None)
            self._dirty = self._dirty or found
        self._poke()

    # --- status -----------------------------------------------------------------

    @staticmethod
    def _new_status() -> dict[str, Any]:
        return {"active_threads": {}, "log": [], "message": ""}

    def _reload(self, reload_status: Callable[[], StatusDict | None] | None) -> StatusDict:
        status: StatusDict = {name: self._new_status() for name in self._jobs}
        if reload_status is None:
            return status
        try:
            # Any: whatever the callback returns is checked below, not trusted.
            loaded: Any = reload_status()
        except Exception as exc:
            event(
                log, "schedule_state_unreadable", logging.ERROR, error=_error_text(exc),
                note="starting with an empty status", exc_info=_debug_traceback(exc),
            )  # fmt: skip
            return status
        if loaded is None:
            return status
        if not isinstance(loaded, dict):
            event(
                log, "schedule_state_unreadable", logging.ERROR,
                error=f"reload_status returned {type(loaded).__name__}, not a dict",
                note="starting with an empty status",
            )  # fmt: skip
            return status
        for name, old in loaded.items():
            spec = self._jobs.get(name)
            if spec is None or not isinstance(old, dict):
                continue
            st = status[name]
            logs = old.get("log")
            if isinstance(logs, list):
                st["log"] = [line for line in logs if isinstance(line, str)]
            if isinstance(old.get("message"), str):
                st["message"] = old["message"]
            for key in ("curr_time", "fire_time"):
                if _is_time_info(old.get(key)):
                    st[key] = old[key]
            # A next fire time computed for another every/at/timezone would be
            # wrong for this one: recompute from scratch in that case.
            if (
                _is_time_info(old.get("next_fire_time"))
                and old.get("schedule") == spec.schedule_key
            ):
                st["next_fire_time"] = old["next_fire_time"]
                st["schedule"] = spec.schedule_key
            active = old.get("active_threads")
            if isinstance(active, dict) and active:
                st["message"] = f"runs aborted by restart: {', '.join(map(str, active))}"
        return status

    def status_snapshot(self) -> StatusDict:
        """A deep copy of every job's status (what `dump_status` receives)."""
        with self._lock:
            return copy.deepcopy(self._status)

    def _touch(self, name: str) -> None:
        self._changed.add(name)
        self._dirty = True

    def _dump(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if self._dump_status is None:
            self._changed.clear()
            return
        with self._lock:
            for name in self._changed:
                if name in self._status:
                    self._snap[name] = copy.deepcopy(self._status[name])
            self._changed.clear()
            snapshot = {name: self._snap[name] for name in self._status}
        try:
            self._dump_status(snapshot)
        except Exception as exc:
            event(
                log, "schedule_state_unwritable", logging.ERROR, error=_error_text(exc),
                exc_info=_debug_traceback(exc),
            )  # fmt: skip

    def _append_log(self, spec: JobSpec, st: dict[str, Any], line: str) -> None:
        logs = st.setdefault("log", [])
        logs.append(line)
        del logs[: -(spec.concurrence_n * 2 + 3)]

    # --- the loop ---------------------------------------------------------------

    def _poke(self) -> None:
        """Wake the loop, from its own thread or any other."""
        token = self._token
        if token is None:
            return
        try:
            in_loop = trio.lowlevel.current_trio_token() is token
        except RuntimeError:
            in_loop = False
        if in_loop:
            self._wake.set()
        else:
            try:
                token.run_sync_soon(lambda: self._wake.set())
            except trio.RunFinishedError:
                pass

    async def run(
        self, *, task_status: trio.TaskStatus[JobScheduler] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (or `stop()`); for `nursery.start`."""
        if self._token is not None:
            raise RuntimeError("this JobScheduler is already running")
        self._token = trio.lowlevel.current_trio_token()
        try:
            with trio.CancelScope() as scope:
                self._cancel_scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._dirty = True
                    task_status.started(self)
                    await self._loop()
        finally:
            self._token = self._nursery = self._cancel_scope = None

    def stop(self) -> None:
        """Stop `run()`/`schedule()`; thread-safe.  Started runs are cancelled."""
        token, scope = self._token, self._cancel_scope
        if token is None or scope is None:
            return
        try:
            token.run_sync_soon(scope.cancel)
        except trio.RunFinishedError:
            pass

    def schedule(self) -> None:
        """pykit's blocking entry point: run the scheduler in this thread until `stop()`."""
        trio.run(self.run)

    async def _loop(self) -> None:
        while True:
            self._wake = trio.Event()
            now = self._wall_clock()
            earliest = self._tick(now)
            self._dump()
            delay = min(earliest - self._wall_clock(), self.max_sleep)
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._wake.wait()
            else:
                await trio.lowlevel.checkpoint()

    def _tick(self, now: float) -> float:
        """Fire every due job; return the earliest next fire time.

        Jobs wait in a heap ordered by next fire time, so a wake-up costs
        O(log n) per due job instead of a scan of every job (pykit's tick
        scanned them all every minute).  Heap entries are never updated in
        place: `_due[name]` holds the sequence number of a job's one valid
        entry, and the others (the job was deleted, re-added or fired since)
        are stale and skipped.
        """
        with self._lock:
            for name in self._fresh:
                spec = self._jobs.get(name)
                if spec is not None:
                    st = self._status.setdefault(name, self._new_status())
                    self._guarded(spec, st, now, self._due_time)
            self._fresh.clear()
            heap = self._heap
            while heap and heap[0][0] <= now + _EPSILON:
                due, seq, name = heapq.heappop(heap)
                if self._due.get(name) != seq:
                    continue
                spec, st = self._jobs[name], self._status[name]
                self._guarded(spec, st, now, functools.partial(self._fire_due, due=due))
            while heap and self._due.get(heap[0][2]) != heap[0][1]:
                heapq.heappop(heap)
            if len(heap) > 2 * len(self._due) + 64:  # add/delete churn left many stale entries
                self._heap = [
                    (ts, seq, name) for ts, seq, name in heap if self._due.get(name) == seq
                ]
                heapq.heapify(self._heap)
            return self._heap[0][0] if self._heap else math.inf

    def _guarded(
        self,
        spec: JobSpec,
        st: dict[str, Any],
        now: float,
        step: Callable[[JobSpec, dict[str, Any], float], None],
    ) -> None:
        """Run one scheduling step for a job, then queue it at its next fire time."""
        try:
            step(spec, st, now)
        except Exception as exc:
            # firetime validated the job, so this is a bug or an impossible
            # date; keep the other jobs going and retry this one in max_sleep
            # rather than spin.
            event(
                log, "schedule_error", logging.ERROR, job=spec.name, error=_error_text(exc),
                retry_in=self.max_sleep, exc_info=exc,
            )  # fmt: skip
            st["message"] = f"scheduling failed: {exc!r}"
            st["next_fire_time"] = time_info(now + self.max_sleep, spec.timing.tz)
            st["schedule"] = spec.schedule_key
            self._touch(spec.name)
        seq = next(self._seq)
        self._due[spec.name] = seq
        heapq.heappush(self._heap, (float(st["next_fire_time"]["ts"]), seq, spec.name))

    def _due_time(self, spec: JobSpec, st: dict[str, Any], now: float) -> None:
        """Make sure a newly scheduled job has a next fire time.

        A reloaded one is kept if it was computed for this same schedule; else
        the first fire is computed from now.
        """
        if _is_time_info(st.get("next_fire_time")) and st.get("schedule") == spec.schedule_key:
            return
        st["next_fire_time"] = time_info(first_fire_ts(spec.timing, now), spec.timing.tz)
        st["schedule"] = spec.schedule_key
        st["curr_time"] = time_info(now, spec.timing.tz)
        self._touch(spec.name)

    def _fire_due(self, spec: JobSpec, st: dict[str, Any], now: float, due: float) -> None:
        tz = spec.timing.tz
        # Next first: whatever the fire does, the job cannot get stuck on a stale time.
        st["next_fire_time"] = time_info(resume_fire_ts(spec.timing, due, now), tz)
        st["curr_time"] = time_info(now, tz)
        self._touch(spec.name)
        if self._filter is not None:
            try:
                wanted = self._filter(spec.conf)
            except Exception as exc:
                event(
                    log, "schedule_filter_failed", logging.ERROR, job=spec.name,
                    error=_error_text(exc), exc_info=_debug_traceback(exc),
                )  # fmt: skip
                wanted, st["message"] = False, f"filter_job failed: {exc!r}"
            else:
                if not wanted:
                    st["message"] = FILTERED_MESSAGE
            if not wanted:
                return
        now_info = time_info(now, tz)
        st["fire_time"] = now_info
        active = st.setdefault("active_threads", {})
        if len(active) >= spec.concurrence_n:
            line = (
                f"at time: {now_info['string']}, already have {len(active)} runs"
                f" for job: {spec.name}; skipped"
            )
            self._append_log(spec, st, line)
            st["message"] = line
            event(
                log, "schedule_skipped", logging.WARNING, job=spec.name, runs=len(active),
                concurrence_n=spec.concurrence_n, fire_time=now_info["string"],
            )  # fmt: skip
            return
        run_id = f"sched:{spec.name}:{int(now)}:{uuid.uuid4().hex[:12]}"
        # Registered before it starts: the next due check sees it even if the
        # run has not been scheduled by trio yet.
        active[run_id] = {"start_time": now_info, "id": run_id}
        if spec.submit is not None and spec.submit.unique:
            # Every fire of a unique job submits this one id (see config.unique_id).
            active[run_id]["job_id"] = unique_id(spec.name)
        self._append_log(spec, st, f"run {run_id} started at: {now_info['string']}")
        st["message"] = ""
        assert self._nursery is not None
        self._nursery.start_soon(self._run_one, spec, st, run_id, name=f"scheduled job {spec.name}")

    async def _run_one(self, spec: JobSpec, st: dict[str, Any], run_id: str) -> None:
        """One fire.  `st` is captured: a deleted job's late run updates an orphan."""
        try:
            result = await self._execute(spec, st, run_id)
        except Exception as exc:
            # One line: which job, which run, what was raised; the traceback
            # is in the status (`traceback`) and, at debug, in the line.
            event(
                log, "schedule_failed", logging.ERROR, job=spec.name, run=run_id,
                **self._job_fields(spec), error=_error_text(exc), exc_info=_debug_traceback(exc),
            )  # fmt: skip
            with self._lock:
                end = time_info(self._wall_clock(), spec.timing.tz)["string"]
                self._append_log(spec, st, f"run {run_id} failed at: {end}")
                st["message"] = f"failed: {type(exc).__name__}: {exc}"
                st["traceback"] = "".join(traceback.format_exception(exc))
        else:
            with self._lock:
                end = time_info(self._wall_clock(), spec.timing.tz)["string"]
                self._append_log(spec, st, f"run {run_id} finished at: {end}")
                if spec.submit is not None and not st.get("message"):
                    st["message"] = f"result: {_short(result)}"
        finally:
            with self._lock:
                st.get("active_threads", {}).pop(run_id, None)
                self._touch(spec.name)
        self._dump()
        self._poke()

    @staticmethod
    def _job_fields(spec: JobSpec) -> dict[str, Any]:
        """What a fire runs, for its log lines: the submitted type, or the function."""
        if spec.submit is not None:
            return {"type": spec.submit.type}
        return {"func": spec.target}

    def _attached(self, spec: JobSpec, st: dict[str, Any], run_id: str) -> None:
        """gloomd acked a unique fire as attached: the work is not run twice."""
        with self._lock:
            job_id = unique_id(spec.name)
            self._append_log(spec, st, f"run {run_id} attached to job {job_id}")
            self._touch(spec.name)
        self._dump()

    async def _execute(self, spec: JobSpec, st: dict[str, Any], run_id: str) -> Any:
        if spec.submit is not None:
            assert self._submit is not None  # checked when the job was added
            sub = spec.submit
            lifecycle = sub.lifecycle()
            job_id = run_id
            if sub.unique:
                job_id = unique_id(spec.name)
                lifecycle["on_attached"] = functools.partial(self._attached, spec, st, run_id)
            return await self._submit(
                job_id, sub.type, sub.body, priority=sub.priority, timeout=sub.timeout,
                **lifecycle,
            )  # fmt: skip
        assert spec.func is not None
        if spec.is_async:
            return await spec.func(*spec.args, **spec.kwargs)
        # abandon_on_cancel: a stuck job function must not hold up shutdown;
        # its thread finishes (unrecorded) in the background.
        result = await trio.to_thread.run_sync(
            functools.partial(spec.func, *spec.args, **spec.kwargs), abandon_on_cancel=True
        )
        if inspect.isawaitable(result):
            # An async function behind a decorator that hides it: its
            # coroutine belongs to this trio run, not to the worker thread.
            result = await result
        return result
