"""The client's exception tree.

The first four names and their attributes are the original Gloom client's, so
code written against Gloom keeps catching what it caught before:

    GloomError
    ├── TransportError      the connection could not be made, or was lost
    ├── ProtocolError       the peer sent something this client cannot follow
    ├── ServerError         an error frame: .error, .reason
    │   ├── Unauthorized    the daemon refused this client's token (or its lack of one)
    │   ├── UnknownJob      no such job (unknown_id): .id
    │   ├── InvalidState    the job is not in a state that allows it (invalid_state): .state
    │   └── JobFailed       the job ended badly: .id, .category, .attempt (job_failed)
    │       └── JobError    its slave reported the failure: .traceback (job_error)
    ├── JobCancelled        the job was cancelled before it ran
    └── WaitTimeout         a wait ran out; the job itself may still succeed

`WaitTimeout` is also a `trio.TooSlowError` (what `trio.fail_after` raises) and
a `TimeoutError`, which is what Gloom's blocking client let escape from its
socket (`socket.timeout` is `TimeoutError`), so all three spellings of
"waited too long" catch it, and none of them catches a job failure.
"""

from __future__ import annotations

from typing import Any

import trio

from gloomwire.vocabulary import describe_failure

__all__ = [
    "GloomError",
    "InvalidState",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "ProtocolError",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "UnknownJob",
    "WaitTimeout",
    "error_from_frame",
]


class GloomError(Exception):
    """Root of every error this client raises on purpose."""


class TransportError(GloomError):
    """The daemon could not be reached, or the connection to it was lost."""


class ProtocolError(GloomError):
    """A frame did not make sense here (undecodable, or out of sequence)."""


class ServerError(GloomError):
    """The daemon answered with an error frame ``{"error": E, "reason": R}``.

    Gloom's client built this from the frame dict, so a dict is still accepted
    as the only argument; ``ServerError(error, reason)`` is the explicit form.
    """

    def __init__(self, error: Any = "unknown error", reason: Any = "unknown cause") -> None:
        if isinstance(error, dict):
            frame = error
            error = frame.get("error", "unknown error")
            reason = frame.get("reason", "unknown cause")
        super().__init__(error, reason)
        self.error = error
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.error} -> {self.reason}"


class Unauthorized(ServerError):
    """gloomd refused the connection: ``{"error":"unauthorized","reason":R}``.

    `reason` is ``"auth"`` (wrong or missing token) or ``"timeout"`` (the auth
    frame came too late).  Kept apart from `TransportError` because retrying
    cannot help: the token has to change.
    """

    def __init__(self, reason: Any = "auth") -> None:
        super().__init__("unauthorized", reason)

    def __str__(self) -> str:
        if self.reason == "timeout":
            return "gloomd refused the connection: no auth frame in time (unauthorized)"
        return "gloomd refused the token (unauthorized): check --token-file or GLOOMD_TOKEN"


class UnknownJob(ServerError):
    """``unknown_id``: gloomd holds no job by that id that this request may touch.

    A cancel of another master's job, a result, kick or delete of an id never
    submitted (or long gone).  `id` is the id the daemon names.
    """

    def __init__(self, id: Any) -> None:
        super().__init__("unknown_id", id)
        self.id = id

    def __str__(self) -> str:
        return f"no job {self.id!r} (unknown_id)"


class InvalidState(ServerError):
    """``invalid_state``: the job exists but its state forbids the request.

    `state` is the daemon's reason, the state the job is in (``running`` for a
    cancel or delete of a running job; ``queued``, ``delayed``... for a kick of
    a job that is not dead).  `id` is the id the request named, when it named
    one (the client fills it in; the frame itself carries only the state).
    """

    def __init__(self, state: Any, id: Any = None) -> None:
        super().__init__("invalid_state", state)
        self.state = state
        self.id = id

    def __str__(self) -> str:
        if self.id is None:
            return f"invalid_state -> {self.state}"
        return f"job {self.id!r} is {self.state} (invalid_state)"


class JobFailed(ServerError):
    """The daemon gave up on a job (``job_failed``): lost slaves, timeout, shutdown, dependency.

    `category` is one of ``CRASH``, ``TIMEOUT``, ``HALTED``, ``DEPENDENCY``,
    ``CANCELLED`` (or, for `JobError`, whatever category the slave reported);
    `dependency` names the job in its `after` that failed (DEPENDENCY).  Its
    text says what failed and why (`gloomwire.vocabulary.describe_failure`):
    ``job 'parse-1' failed (DEPENDENCY): job 'fetch-1' in its after failed,
    so it never ran``.  `attempt` is the delivery count the final failure
    frame reports (gloomd adds it for a job submitted with ``retries`` or
    kicked), or None when the frame has none (Gloom, or a job that used no
    lifecycle key: protocol.md's frame).
    """

    def __init__(
        self,
        id: Any,
        category: str | None,
        reason: Any = None,
        *,
        error: str = "job_failed",
        dependency: Any = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(error, id if reason is None else reason)
        self.id = id
        self.category = category
        self.dependency = dependency
        self.attempt = attempt

    def __str__(self) -> str:
        why = describe_failure(self.category, self.dependency)
        return f"job {self.id!r} failed ({self.category}): {why}"


class JobError(JobFailed):
    """The slave running the job reported a failure (``job_error``).

    `reason` is what the slave sent; `traceback` is its ``traceback`` text when
    the reason is a dict carrying one (the worker runner sends
    ``{type, message, traceback}``), else None.
    """

    def __init__(
        self, id: Any, category: str | None, reason: Any = None, *, attempt: int | None = None
    ) -> None:
        super().__init__(id, category, reason, error="job_error", attempt=attempt)
        tb = reason.get("traceback") if isinstance(reason, dict) else None
        self.traceback: str | None = tb if isinstance(tb, str) else None

    def __str__(self) -> str:
        reason = self.reason
        if isinstance(reason, dict) and "message" in reason:
            kind = reason.get("type")
            reason = f"{kind}: {reason['message']}" if kind else reason["message"]
        return f"job {self.id!r} error ({self.category}): {reason}"


class JobCancelled(GloomError):
    """The job was cancelled (removed from its queue) before any slave ran it."""

    def __init__(self, id: Any) -> None:
        super().__init__(id)
        self.id = id

    def __str__(self) -> str:
        return f"job {self.id!r} was cancelled"


class WaitTimeout(GloomError, trio.TooSlowError, TimeoutError):
    """A wait ran out of time.  Says nothing about the job, which may still finish."""


def error_from_frame(frame: dict[str, Any]) -> ServerError:
    """The exception an error frame stands for.

    A ``job_failed`` frame from Gloom itself carries only ``reason`` (the id);
    gloomd adds ``id`` and ``category``.  Both shapes are understood.
    """
    error = frame.get("error")
    if error == "job_failed":
        job_id = frame["id"] if "id" in frame else frame.get("reason")
        return JobFailed(
            job_id,
            frame.get("category"),
            frame.get("reason"),
            dependency=frame.get("dependency"),
            attempt=_attempt(frame),
        )
    if error == "job_error":
        return JobError(
            frame.get("id"), frame.get("category"), frame.get("reason"), attempt=_attempt(frame)
        )
    if error == "unauthorized":
        # A client that sent no token learns it from its first request's reply.
        return Unauthorized(frame.get("reason", "auth"))
    if error == "unknown_id":
        return UnknownJob(frame.get("reason"))
    if error == "invalid_state":
        return InvalidState(frame.get("reason"))
    return ServerError(frame)


def _attempt(frame: dict[str, Any]) -> int | None:
    """A final failure frame's ``attempt``: a positive integer, else None."""
    attempt = frame.get("attempt")
    if type(attempt) is int and attempt >= 1:
        return attempt
    return None
