"""System load: sampling it without blocking trio, and judging it against thresholds.

Two halves, kept apart on purpose:

* The judging half is pure: :class:`Thresholds`, :class:`SystemLoad` and
  :func:`check_load` compare numbers and raise :class:`SystemOverloadError` with
  pykit wsjobd's exact messages, so they can be tested with plain values.
* The sampling half, :class:`LoadSampler`, is the only place that calls psutil.
  Every psutil call runs in a worker thread, and the CPU sampling window is a
  ``trio.sleep`` between two readings, so nothing here ever stalls the event loop.

Why not ``psutil.cpu_times_percent(window)`` as pykit did?  Three reasons:

1. It sleeps for the whole window in the calling thread; a thousand clients with
   their own windows would need a thousand sleeping threads.
2. It divides by ``max(1, all_delta)`` where ``all_delta`` is in *seconds*, so for
   any window shorter than ``1 / cpu_count`` seconds it reports idle percentages
   that are far too low (psutil issue #1586, fix PR #2413 still open).  With the
   default 0.02 s window on an idle 2-core machine it returns 4.0, which is
   barely above the default 3 % threshold: a busy but healthy machine would be
   refused work.  We divide by the real elapsed CPU time instead.
3. Its zero-window mode keeps "the previous reading" per *thread*; trio's worker
   threads come and go, so every zero-window call would compare a reading with
   itself and report 0 % idle.  :class:`LoadSampler` keeps its own previous
   reading instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import psutil
import trio

from gloomwire.logformat import event

__all__ = [
    "DEFAULT_CPU_LOW_THRESHOLD",
    "DEFAULT_MAX_CLIENT_NUMBER",
    "DEFAULT_MEM_LOW_THRESHOLD",
    "CpuReading",
    "LoadSampler",
    "LoadSamplingError",
    "SystemLoad",
    "SystemOverloadError",
    "Thresholds",
    "check_load",
    "cpu_idle_percent",
]

log = logging.getLogger(__name__)

# pykit wsjobd's defaults, which apply as soon as a client sends any `check_load` object.
DEFAULT_MEM_LOW_THRESHOLD = 500 * 1024**2  # bytes of available memory
DEFAULT_CPU_LOW_THRESHOLD = 3  # percent idle
DEFAULT_MAX_CLIENT_NUMBER = 1000  # open websocket connections


class SystemOverloadError(Exception):
    """The machine is too busy to accept the job; args[0] is the client-facing message.

    Deliberately not a subclass of the wsjobd JobError tree: pykit kept it apart
    and clients match on the class name only.
    """


class LoadSamplingError(RuntimeError):
    """psutil failed to read the system's memory or CPU counters."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The three limits of a `check_load` request (pykit names and defaults).

    Values are whatever JSON number the client sent: comparisons use them as
    given and only the error message truncates them, as pykit's ``%d`` did.
    """

    mem_low_threshold: float = DEFAULT_MEM_LOW_THRESHOLD
    cpu_low_threshold: float = DEFAULT_CPU_LOW_THRESHOLD
    max_client_number: float = DEFAULT_MAX_CLIENT_NUMBER


@dataclass(frozen=True, slots=True)
class SystemLoad:
    """One reading of the numbers a threshold is compared with."""

    mem_available: int
    cpu_idle_percent: float
    client_number: int

    def as_dict(self) -> dict[str, Any]:
        """The ``system_load`` object of a progress report (pykit's key names)."""
        return {
            "mem_available": self.mem_available,
            "cpu_idle_percent": self.cpu_idle_percent,
            "client_number": self.client_number,
        }


def _truncated(value: float) -> int:
    # pykit formatted with "%d", which truncates towards zero.
    return int(value)


def check_load(load: SystemLoad, thresholds: Thresholds) -> None:
    """Raise SystemOverloadError if `load` breaks a limit; equal to a limit is fine.

    pykit iterated a Python 2 dict, so which limit was reported first when several
    were broken was unspecified; we fix the order: memory, CPU, clients.
    """
    if load.mem_available < thresholds.mem_low_threshold:
        raise SystemOverloadError(
            f"mem_available: {_truncated(load.mem_available)} is less than: "
            f"{_truncated(thresholds.mem_low_threshold)}"
        )
    if load.cpu_idle_percent < thresholds.cpu_low_threshold:
        raise SystemOverloadError(
            f"cpu_idle_percent: {_truncated(load.cpu_idle_percent)} is less than: "
            f"{_truncated(thresholds.cpu_low_threshold)}"
        )
    if load.client_number > thresholds.max_client_number:
        raise SystemOverloadError(
            f"client_number: {load.client_number} is greater than: "
            f"{_truncated(thresholds.max_client_number)}"
        )


class CpuReading(NamedTuple):
    """Cumulative CPU seconds since boot, all CPUs together: idle, and everything."""

    idle: float
    total: float


def _cpu_reading() -> CpuReading:
    times = psutil.cpu_times()
    total = sum(times)
    # On Linux guest time is already counted inside user/nice; psutil and htop
    # subtract it so it is not counted twice, and so do we.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return CpuReading(idle=times.idle, total=total)


def cpu_idle_percent(before: CpuReading, after: CpuReading) -> float | None:
    """Idle share of all CPU time between two readings, in percent (0-100, 1 decimal).

    None when no CPU time elapsed between them (the kernel counts in ticks of
    10 ms per CPU, so two readings very close together can be identical): there
    is simply no information, and 0 % would wrongly look like an overload.
    """
    total = after.total - before.total
    if total <= 0:
        return None
    idle = max(0.0, after.idle - before.idle)
    return round(min(100.0, 100.0 * idle / total), 1)


def _read_now() -> tuple[CpuReading, int]:
    return _cpu_reading(), psutil.virtual_memory().available


class _Pending:
    """One sampling in flight, shared by everyone who asked for the same window."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: tuple[int, float] = (0, 0.0)
        self.error: str | None = None


class LoadSampler:
    """Samples available memory and CPU idleness for many concurrent askers.

    Concurrent requests for the same CPU window share one sampling: with a thousand
    listeners all using pykit's default 0.02 s window, the machine is sampled
    about fifty times a second at most, not a thousand.  A request that joins a
    sampling already under way gets a result over a full window that ends at most
    one window from now, which is what it asked for.

    Samplings run as tasks in the nursery given here, not in the asking task, so an
    asker that is cancelled (its client went away) never strands the others.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._pending: dict[float, _Pending] = {}
        # Zero-window samplings measure since the previous reading of this
        # sampler; before any reading that is "since boot" (all counters zero).
        self._previous = CpuReading(idle=0.0, total=0.0)
        self._last_idle: float | None = None

    async def sample(self, cpu_window: float) -> tuple[int, float]:
        """Return ``(mem_available bytes, cpu_idle_percent)`` over `cpu_window` seconds.

        A zero window compares with the previous reading taken by this sampler.
        """
        if not (math.isfinite(cpu_window) and cpu_window >= 0):
            raise ValueError(f"cpu window must be a finite number >= 0, not {cpu_window!r}")
        pending = self._pending.get(cpu_window)
        if pending is None:
            pending = self._pending[cpu_window] = _Pending()
            self._nursery.start_soon(self._take, cpu_window, pending)
        await pending.done.wait()
        if pending.error is not None:
            # A fresh exception per asker: one shared instance would collect every
            # asker's traceback frames.
            raise LoadSamplingError(pending.error)
        return pending.result

    async def _take(self, cpu_window: float, pending: _Pending) -> None:
        completed = False
        try:
            if cpu_window > 0:
                before = await trio.to_thread.run_sync(_cpu_reading)
                await trio.sleep(cpu_window)
            else:
                before = self._previous
            after, mem_available = await trio.to_thread.run_sync(_read_now)
            self._previous = after
            idle = cpu_idle_percent(before, after)
            if idle is None:
                idle = self._last_idle
            if idle is None:
                idle = cpu_idle_percent(CpuReading(0.0, 0.0), after)
            self._last_idle = idle = idle if idle is not None else 100.0
            pending.result = (mem_available, idle)
            completed = True
        except Exception as exc:  # psutil's errors are OSError or its own Error tree
            event(log, "wsjobd_load_sampling_failed", logging.ERROR, error=f"{exc!r}", exc_info=exc)
            pending.error = f"system load sampling failed: {exc!r}"
        finally:
            if not completed and pending.error is None:
                pending.error = "system load sampling was cancelled"
            del self._pending[cpu_window]
            pending.done.set()
