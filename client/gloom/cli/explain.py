"""What the `gloom` command says when the daemon refuses: a sentence, then the error's name.

An error frame is `{"error": NAME, "reason": R}`, exact and terse:
`unknown_id -> report-may` is right but says nothing to a person.  Every
command words the refusals here, the same way: what failed, why, what to do,
and the protocol's own name in parentheses for whoever reads the logs or the
protocol reference.  Job failures (`JobFailed`, `JobError`) word themselves
(`gloom.errors`).
"""

from __future__ import annotations

from typing import Any

from ..errors import GloomError, JobFailed, ServerError, Unauthorized

__all__ = ["explain"]


def _id(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def explain(error: GloomError, *, action: str | None = None, job_id: Any = None) -> str:
    """One line for `error`, raised while doing `action` (``cancel``, ``result``,
    ``submit``...) on job `job_id` when there is one."""
    if isinstance(error, (JobFailed, Unauthorized)) or not isinstance(error, ServerError):
        return str(error)
    name, reason = error.error, error.reason
    shown = _id(job_id if job_id is not None else reason)
    if (name, reason) == ("invalid_action", "not_a_master"):
        return (
            "this is gloomd's slave port, not its master port (invalid_action: not_a_master):"
            " give the master port to --master-port (9998 by default)"
        )
    if (name, reason) == ("invalid_action", "not_a_slave"):
        return (
            "this is gloomd's master port, not its slave port (invalid_action: not_a_slave):"
            " give the slave port to --slave-port (9999 by default)"
        )
    if action == "cancel" and name == "unknown_id":
        return (
            f"cannot cancel {shown}: gloomd has no queued job {shown} you may cancel (unknown_id):"
            " it finished, never existed, or is another master's job that is not detached"
        )
    if action == "cancel" and (name, reason) == ("invalid_state", "running"):
        return (
            f"cannot cancel {shown}: it is running (invalid_state: running);"
            " only a queued job can be cancelled"
        )
    if action == "result" and name == "not_ready":
        return f"job {shown} is not finished yet (not_ready): ask again later"
    if action == "result" and name == "unknown_id":
        return (
            f"gloomd has no detached job or kept result {shown} (unknown_id): it never existed,"
            " was not detached, or finished more than --result-ttl ago"
        )
    if name == "id_exists":
        return f"a job with id {shown} is already queued or running (id_exists): choose another id"
    if name == "queue_full":
        return "gloomd's queues are full (queue_full: --max-queued reached): try again later"
    if name == "unknown_dependency":
        return (
            f"--after {_id(reason)}: gloomd knows no job {_id(reason)} (unknown_dependency):"
            " it never existed, or finished more than --result-ttl ago"
        )
    if name == "dependency_cycle":
        return f"--after {_id(reason)}: a job cannot wait for itself (dependency_cycle)"
    if name == "too_many_connections":
        return f"gloomd is at its connection cap of {reason} (too_many_connections)"
    return f"gloomd refused the request: {name} ({_id(reason)})"
