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
    "cancel",
    "describe_failure",
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
#: The job lifecycle's master actions (durability-and-operations.md section 2).
LIFECYCLE_ACTIONS: Final = frozenset({"kick", "delete", "jobs", "pause", "resume"})
#: Actions of the master port (besides `BOTH_PORTS`).
MASTER_ACTIONS: Final = frozenset({"submit", "cancel", "result", "stats"}) | LIFECYCLE_ACTIONS
#: Actions either port answers.
BOTH_PORTS: Final = frozenset({"ping", "auth"})
#: The states `jobs` reports (and filters by), in the reference's order.
JOB_STATES: Final = ("queued", "delayed", "waiting", "running", "dead")

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
    job_id: Any, job_type: Any, body: Any, attempt: int = 1, timeout: int | float | None = None
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


def attached(job_id: Any) -> dict[str, Any]:
    """A `unique` submit joined the live job of that id: `{"ok":true,"id":ID,"attached":true}`."""
    return {"ok": True, "id": job_id, "attached": True}


def kicked(count: int) -> dict[str, Any]:
    """The answer to a kick by type: `{"ok":true,"kicked":k}`."""
    return {"ok": True, "kicked": count}


def job_row(
    job_id: Any, job_type: Any, priority: int, state: str, attempt: int, age_s: float, detach: bool
) -> dict[str, Any]:
    """One job in a `jobs` answer, in the reference's key order."""
    return {
        "id": job_id,
        "type": job_type,
        "priority": priority,
        "state": state,
        "attempt": attempt,
        "age_s": age_s,
        "detach": detach,
    }


def jobs_page(rows: list[dict[str, Any]], next_cursor: Any) -> dict[str, Any]:
    """The answer to `jobs`: `{"ok":true,"jobs":[...],"next":C}` (C null at the end)."""
    return {"ok": True, "jobs": rows, "next": next_cursor}


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
    job_id: Any, job_type: Any, body: Any, priority: Any = 0, **extra: Any
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


def kick(job_id: Any) -> dict[str, Any]:
    """Put one dead job back in its queue."""
    return {"action": "kick", "id": job_id}


def kick_type(job_type: Any, limit: int | None = None) -> dict[str, Any]:
    """Put the `limit` oldest dead jobs of a type (all of them: None) back in the queue."""
    if limit is None:
        return {"action": "kick", "type": job_type}
    return {"action": "kick", "type": job_type, "limit": limit}


def delete(job_id: Any) -> dict[str, Any]:
    """Remove a job that is not running (dead letters included)."""
    return {"action": "delete", "id": job_id}


def jobs_request(**keys: Any) -> dict[str, Any]:
    """List the jobs held: keys among `type`, `state`, `limit`, `cursor`, in that order.

    Only the keys given are sent (a type may be null, so None is a value).
    """
    frame: dict[str, Any] = {"action": "jobs"}
    for name in ("type", "state", "limit", "cursor"):
        if name in keys:
            frame[name] = keys[name]
    unknown = keys.keys() - {"type", "state", "limit", "cursor"}
    if unknown:
        raise TypeError(f"jobs takes no key {sorted(unknown)[0]!r}")
    return frame


def pause(job_type: Any) -> dict[str, Any]:
    """Stop handing out jobs of a type (its queue and slaves stay)."""
    return {"action": "pause", "type": job_type}


def resume(job_type: Any) -> dict[str, Any]:
    return {"action": "resume", "type": job_type}


# The job lifecycle's words (durability-and-operations.md section 2).
__all__ += [
    "JOB_STATES",
    "LIFECYCLE_ACTIONS",
    "attached",
    "delete",
    "job_row",
    "jobs_page",
    "jobs_request",
    "kick",
    "kick_type",
    "kicked",
    "pause",
    "resume",
]
