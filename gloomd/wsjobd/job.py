"""What a job function receives, and how its listeners are woken."""

from __future__ import annotations

from typing import Any

import trio

__all__ = ["Job", "ProgressAvailable"]


class ProgressAvailable:
    """pykit's ``job.progress_available``, kept so pykit job functions run unchanged.

    pykit made it a ``threading.Event`` that senders waited on and cleared, which
    let one sender swallow another's wake-up.  Here ``set()`` wakes every listener
    at once through their own events, so there is nothing to clear.
    """

    __slots__ = ("_job",)

    def __init__(self, job: Job) -> None:
        self._job = job

    def set(self) -> None:
        self._job.report_now()

    def clear(self) -> None:
        """Nothing to clear: wake-ups are delivered, not stored."""

    def is_set(self) -> bool:
        return False


class Job:
    """What a job function receives: pykit's surface plus :meth:`report_now`.

    * ``data``: the creating client's job description; the job writes its
      progress and results into it (``job.data["result"] = ...``).  Listeners
      only ever send copies of it.
    * ``ident``, ``ctx`` (a dict for the job's own use), ``err`` (the exception
      the job raised, once it has).
    * ``report_now()`` / ``progress_available.set()``: send every listener a report
      now instead of at its next interval.  Safe from the job's thread and from
      trio.
    """

    def __init__(self, ident: Any, data: dict[str, Any], trio_token: trio.lowlevel.TrioToken):
        self.ident = ident
        self.data = data
        self.ctx: dict[str, Any] = {}
        self.err: BaseException | None = None
        self.done = False
        self.finished = trio.Event()
        self._trio_token = trio_token
        self._wakeups: set[trio.Event] = set()
        # Coalesces report_now() bursts from a thread into one loop callback.
        self._wake_scheduled = False

    @property
    def progress_available(self) -> ProgressAvailable:
        """pykit's event, made on demand.

        Stored, it would be a reference cycle (job -> event -> job): a finished
        job, with the client's whole description in ``data``, would then wait
        for a full garbage collection (every --gc-interval, 300 s) instead of
        being freed when its last reference goes.  Measured: 600 finished 1 MB
        jobs of clients that hung up kept the daemon at 708 MB.
        """
        return ProgressAvailable(self)

    def report_now(self) -> None:
        """Ask every listener for an immediate report (callable from any thread)."""
        if self._wake_scheduled:
            return
        self._wake_scheduled = True
        try:
            self._trio_token.run_sync_soon(self._wake_listeners)
        except trio.RunFinishedError:
            pass  # the daemon is gone; nobody is listening

    def _wake_listeners(self) -> None:
        self._wake_scheduled = False
        for wakeup in self._wakeups:
            wakeup.set()

    def _subscribe(self) -> trio.Event:
        wakeup = trio.Event()
        self._wakeups.add(wakeup)
        return wakeup

    def _unsubscribe(self, wakeup: trio.Event) -> None:
        self._wakeups.discard(wakeup)

    def _finish(self) -> None:
        self.done = True
        self.finished.set()
        self._wake_listeners()
