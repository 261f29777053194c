"""What the websocket service answers when a job cannot start or ends badly.

pykit's frame shape, ``{"err": ClassName, "val": [args]}``: clients match on
the class names, so the tree below is pykit's, plus `JobFailedError` for the
explicit failure frame and `IdleTimeoutError` for a connection that never
sent its job description.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "IdleTimeoutError",
    "InvalidMessageError",
    "InvalidProgressError",
    "JobError",
    "JobFailedError",
    "LoadingError",
    "error_frame",
    "job_failed_frame",
]

# pykit's tree (clients match on these class names), plus JobFailedError for the
# explicit failure frame.  SystemOverloadError lives in `load`, outside it.


class JobError(Exception):
    """A job description was refused; args[0] is the message the client sees."""


class InvalidMessageError(JobError):
    """The job description is malformed or has a field of the wrong type."""


class InvalidProgressError(InvalidMessageError):
    """The ``progress`` field, or one of its keys, is malformed."""


class LoadingError(JobError):
    """The named job function cannot be found or imported in the jobs directory."""


class JobFailedError(JobError):
    """Sent, never raised: the job function raised; args[0] is "ExcType: message"."""


class IdleTimeoutError(JobError):
    """Sent, never raised: no job description came within WsLimits.idle_timeout."""


def error_frame(exc: Exception) -> dict[str, Any]:
    """pykit's error shape: the class name and the exception's args as a list."""
    return {"err": type(exc).__name__, "val": list(exc.args)}


def job_failed_frame(exc: BaseException) -> dict[str, Any]:
    """The explicit failure frame that replaces pykit's silently stored ``job.err``."""
    return error_frame(JobFailedError(f"{type(exc).__name__}: {exc}"))
