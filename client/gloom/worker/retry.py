"""`Retry`: how a handler asks for its job to be run again.

The runner answers a handler that raises `Retry` with ``fail`` category
ERROR, like any exception, and the daemon decides: a job submitted with
``retries`` left is queued again after its own back-off, and delivered with
``attempt`` + 1; a job with none left ends, and its master gets the failure.
What `Retry` changes is the report, not the rule: its reason is the message
given (``{"type": "Retry", "message": ..., "traceback": ""}``), without a
traceback to wade through for what is an expected condition, and the runner
counts it in `RunnerStats.retries` rather than `errors`.

This module is loaded in pool processes too, where the `gloom` package is not
(see `pool.BOOTSTRAP`): it imports nothing but the standard library.  A
handler's ``gloom.worker.Retry`` and the pool's copy of this module are then
two classes, so the pool recognises a retry by the marker attribute
`RETRY_MARKER`, which subclasses inherit, rather than by `isinstance`.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["RETRY_MARKER", "Retry", "is_retry", "retry_reason"]

#: The class attribute that makes an exception a retry request.
RETRY_MARKER: Final = "_gloom_worker_retry"


class Retry(Exception):
    """Raise in a handler to have the job run again, within its own retry budget.

    ``raise gloom.worker.Retry("the upstream is busy")``.  The job's
    ``retries`` and ``backoff`` (set by whoever submitted it) decide whether
    and when it runs again; `job.attempt` tells the next run which attempt it
    is.  Unlike arq's ``Retry(defer=...)``, the handler chooses no delay and
    has no budget of its own: a job submitted without ``retries`` fails at
    once, its master getting ``job_error`` ERROR with this reason.
    """

    _gloom_worker_retry: Final = True

    def __init__(self, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.reason = reason


def is_retry(exc: BaseException) -> bool:
    """True for a `Retry` from either copy of this module (or a subclass)."""
    return getattr(type(exc), RETRY_MARKER, False) is True


def retry_reason(exc: BaseException) -> dict[str, Any]:
    """The ``fail`` reason of a retry request: the handler's message, no traceback."""
    return {"type": "Retry", "message": str(exc), "traceback": ""}
