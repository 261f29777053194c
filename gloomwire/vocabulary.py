"""The words of the protocol: actions, error names, categories, and every frame's shape.

Each frame of protocol.md is built here, once, by the side that sends it: the
daemon's answers (`ack`, `error`, `job_failed`, ...) and the clients' requests
(`submit`, `join`, ...).  Key order is Gloom's (protocol.md: "Key order in the
shapes below is the order Gloom used; keep it"), which a dict literal keeps.

Builders return plain dicts; framing (`gloomwire.framing.encode_frame`) turns
them into bytes.  The few frames that never change are also kept encoded
(`OK_FRAME`), because the daemon sends one per job.
"""

from __future__ import annotations

from typing import Any, Final

from .framing import encode_frame

__all__ = [
    "BOTH_PORTS",
    "CATEGORIES",
    "FAILED_CATEGORIES",
    "MASTER_ACTIONS",
    "OK",
    "OK_FRAME",
    "SLAVE_ACTIONS",
    "ack",
    "auth",
    "describe_failure",
    "cancel",
    "error",
    "fail",
    "job",
    "job_error",
    "job_failed",
    "join",
    "ping",
    "progress",
    "progress_report",
    "respond",
    "result",
    "result_request",
    "stats",
    "stats_request",
    "submit",
]

# ---------------------------------------------------------------- actions

#: Actions of the slave port (besides `BOTH_PORTS`).
SLAVE_ACTIONS: Final = frozenset({"join", "respond", "progress", "fail"})
#: Actions of the master port (besides `BOTH_PORTS`).
MASTER_ACTIONS: Final = frozenset({"submit", "cancel", "result", "stats"})
#: Actions either port answers.
BOTH_PORTS: Final = frozenset({"ping", "auth"})

# ---------------------------------------------------------------- categories

#: What a slave may report with `fail` (`job_error` frames carry it).
CATEGORIES: Final = ("ERROR", "TIMEOUT", "CRASH", "HALTED")
#: What a `job_failed` frame may carry: the daemon's own endings of a job.
FAILED_CATEGORIES: Final = ("CRASH", "TIMEOUT", "HALTED", "DEPENDENCY", "CANCELLED")

#: What each category means when the daemon ended the job (`job_failed`),
#: in words a person reads: the client's and the scheduler's messages.
_FAILURE_MEANINGS: Final = {
    "CRASH": "its slave was lost while running it, too many times (--max-retries)",
    "TIMEOUT": "it ran past its timeout",
    "HALTED": "gloomd stopped before it finished",
    "DEPENDENCY": "a job in its after failed, so it never ran",
    "CANCELLED": "it was cancelled while queued",
}


def describe_failure(category: Any, dependency: Any = None) -> str:
    """Why the daemon ended a job, from its `job_failed` frame's category.

    With `dependency` (the frame's key for DEPENDENCY) the failed job is
    named: ``job 'fetch-1' in its after failed, so it never ran``.
    """
    if category == "DEPENDENCY" and dependency is not None:
        return f"job {dependency!r} in its after failed, so it never ran"
    meaning = _FAILURE_MEANINGS.get(category) if isinstance(category, str) else None
    return meaning if meaning is not None else f"gloomd ended it ({category})"

# ---------------------------------------------------------------- daemon -> peer

#: `{"ok":true}`: the answer to join, respond, fail, auth, ping.
OK: Final[dict[str, Any]] = {"ok": True}
#: The same, encoded once: the daemon sends one per job.
OK_FRAME: Final = encode_frame(OK)


def ack(job_id: Any) -> dict[str, Any]:
    """A submit accepted, or a cancel done: `{"ok":true,"id":ID}` (the id echoed as given)."""
    return {"ok": True, "id": job_id}


def error(name: str, reason: Any) -> dict[str, Any]:
    """An error frame: `{"error":NAME,"reason":R}`."""
    return {"error": name, "reason": reason}


def job_failed(job_id: Any, category: str, **extra: Any) -> dict[str, Any]:
    """The daemon ended a job: Gloom's `reason` (the id), plus `id` and `category`.

    `extra` keys follow (e.g. `dependency` for DEPENDENCY).
    """
    frame = {"error": "job_failed", "reason": job_id, "id": job_id, "category": category}
    if extra:
        frame.update(extra)
    return frame


def job_error(job_id: Any, category: str, reason: Any) -> dict[str, Any]:
    """A slave reported the job failed (`fail`)."""
    return {"error": "job_error", "reason": reason, "id": job_id, "category": category}


def result(job_id: Any, body: Any) -> dict[str, Any]:
    """A job's result, to its master: `{"id":ID,"body":R}`."""
    return {"id": job_id, "body": body}


def progress(job_id: Any, body: Any) -> dict[str, Any]:
    """A slave's progress, to the job's master: `{"id":ID,"progress":P}`."""
    return {"id": job_id, "progress": body}


def job(
    job_id: Any, job_type: Any, body: Any, attempt: int = 1, timeout: float | None = None
) -> dict[str, Any]:
    """A job handed to a slave.

    Gloom's four keys first; `attempt` only on a redelivery (a missing one
    reads as 1) and `timeout` only when the submit set one, so the first
    delivery of a Gloom-style job is byte for byte Gloom's frame.
    """
    frame = {"action": "job", "id": job_id, "type": job_type, "body": body}
    if attempt > 1:
        frame["attempt"] = attempt
    if timeout is not None:
        frame["timeout"] = timeout
    return frame


def stats(body: dict[str, Any]) -> dict[str, Any]:
    """The answer to `stats`."""
    return {"ok": True, "stats": body}


# ---------------------------------------------------------------- peer -> daemon


def auth(token: str) -> dict[str, Any]:
    """The first frame of a connection to a daemon that wants a token."""
    return {"action": "auth", "token": token}


def ping() -> dict[str, Any]:
    return {"action": "ping"}


def join(job_type: Any) -> dict[str, Any]:
    return {"action": "join", "type": job_type}


def respond(body: Any) -> dict[str, Any]:
    return {"action": "respond", "body": body}


def progress_report(body: Any) -> dict[str, Any]:
    """A slave's progress on the job it holds (no reply)."""
    return {"action": "progress", "body": body}


def fail(category: str, reason: Any = None) -> dict[str, Any]:
    return {"action": "fail", "error": category, "reason": reason}


def submit(
    job_id: Any, job_type: Any, body: Any, priority: int = 0, **extra: Any
) -> dict[str, Any]:
    """A master's submit; `extra` holds the optional keys (timeout, detach, after, ...)."""
    frame = {"action": "submit", "id": job_id, "type": job_type, "priority": priority, "body": body}
    if extra:
        frame.update(extra)
    return frame


def cancel(job_id: Any) -> dict[str, Any]:
    return {"action": "cancel", "id": job_id}


def result_request(job_id: Any) -> dict[str, Any]:
    """Ask for a detached job's outcome."""
    return {"action": "result", "id": job_id}


def stats_request(job_type: Any = None, *, filtered: bool = False) -> dict[str, Any]:
    """Ask for the daemon's figures; with `filtered`, only `job_type`'s row."""
    if filtered:
        return {"action": "stats", "type": job_type}
    return {"action": "stats"}
