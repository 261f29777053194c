"""The job lifecycle's words on the client side (no I/O): submit keys, admin frames, rows.

gloomd's lifecycle (durability-and-operations.md, section 2) adds four
optional submit keys (`delay`, `retries`, `backoff`, `unique`) and the master
actions `kick`, `delete`, `jobs`, `pause` and `resume`.  The frames
themselves are gloomwire.vocabulary's (one place for the wire words, the
daemon's too); this module holds what only a client needs: the `jobs`
request's arguments checked before a round trip, and the answers of `jobs`
as typed rows (`JobInfo`), so that both I/O shells (trio and blocking) and
the `gloom` command read them one way.

Every key is sent only when asked for: a client that never uses them writes
exactly the frames of protocol.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

from gloomwire import vocabulary

from .errors import ProtocolError

__all__ = [
    "ANY_TYPE",
    "LIFECYCLE_KEYS",
    "MAX_PAGE",
    "JobInfo",
    "JobsPage",
    "ListedState",
    "check_limit",
    "check_page_size",
    "jobs_request",
    "listed_state",
    "parse_jobs_reply",
]

#: The submit keys of the lifecycle, in the order gloomd checks them.
LIFECYCLE_KEYS: Final = ("delay", "retries", "backoff", "unique")

#: Most rows one `jobs` answer carries (a larger `limit` is `invalid_type`).
MAX_PAGE: Final = 1000


class _AnyType:
    """The "no type filter" marker: a job type may be any JSON value, null too."""

    _instance: _AnyType | None = None

    def __new__(cls) -> _AnyType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY_TYPE"


#: Pass (or leave as the default) to list or page over every type.
ANY_TYPE: Final = _AnyType()


class ListedState(enum.StrEnum):
    """The state of a job gloomd holds, as `jobs` reports it.

    ``waiting`` on its `after` jobs, ``delayed`` (a `delay`, or a retry's
    back-off), ``queued``, ``running`` on a slave, or ``dead`` (a detached job
    that failed, kept until it is kicked or deleted).
    """

    WAITING = "waiting"
    DELAYED = "delayed"
    QUEUED = "queued"
    RUNNING = "running"
    DEAD = "dead"


@dataclass(frozen=True)
class JobInfo:
    """One row of `jobs`: a job as gloomd holds it.

    `attempt` counts its deliveries so far (0 if it never ran), `age_s` the
    seconds since gloomd accepted it, `detach` whether it outlives its master.
    """

    id: Any
    type: Any
    priority: int
    state: ListedState
    attempt: int
    age_s: float
    detach: bool

    @classmethod
    def from_row(cls, row: Any) -> JobInfo:
        """A row of a `jobs` answer, checked; `ProtocolError` if it is not one."""
        if not isinstance(row, dict):
            raise ProtocolError(f"jobs row is not an object: {row!r:.200}")
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise ProtocolError(f"jobs row without {', '.join(missing)}: {row!r:.200}")
        try:
            state = ListedState(row["state"])
        except ValueError:
            raise ProtocolError(f"jobs row with an unknown state: {row['state']!r:.100}") from None
        priority, attempt, age = row["priority"], row["attempt"], row["age_s"]
        detach = row["detach"]
        if not (_is_int(priority) and _is_int(attempt) and _is_number(age)):
            raise ProtocolError(f"jobs row with a field of the wrong type: {row!r:.200}")
        if type(detach) is not bool:
            raise ProtocolError(f"jobs row with a non-boolean detach: {row!r:.200}")
        return cls(row["id"], row["type"], priority, state, attempt, float(age), detach)


_ROW_KEYS: Final = ("id", "type", "priority", "state", "attempt", "age_s", "detach")


@dataclass(frozen=True)
class JobsPage:
    """One answer of `jobs`: its rows, and the cursor of the next page (None: the last)."""

    jobs: list[JobInfo]
    next_cursor: Any


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# ---------------------------------------------------------------- requests


def jobs_request(
    job_type: Any = ANY_TYPE,
    state: ListedState | str | None = None,
    limit: int | None = None,
    cursor: Any = None,
) -> dict[str, Any]:
    """One page of `jobs`; every key but the action only when given.

    `state` is checked here (a `ValueError` names the accepted ones) rather
    than by a round trip; `cursor` None asks for the first page (a real
    cursor is never null: null is how the last page says it is the last).
    """
    keys: dict[str, Any] = {}
    if job_type is not ANY_TYPE:
        keys["type"] = job_type
    if state is not None:
        keys["state"] = listed_state(state).value
    if limit is not None:
        keys["limit"] = limit
    if cursor is not None:
        keys["cursor"] = cursor
    return vocabulary.jobs_request(**keys)


def listed_state(state: ListedState | str) -> ListedState:
    """`state` as a `ListedState`, or a `ValueError` naming the states there are."""
    try:
        return ListedState(state)
    except ValueError:
        names = ", ".join(s.value for s in ListedState)
        raise ValueError(f"state must be one of {names}; got {state!r}") from None


def parse_jobs_reply(frame: dict[str, Any]) -> JobsPage:
    """`{"ok":true,"jobs":[...],"next":C}` as a `JobsPage`; `ProtocolError` if malformed."""
    rows = frame.get("jobs")
    if not isinstance(rows, list):
        raise ProtocolError(f"jobs answer without a list of jobs: {frame!r:.200}")
    return JobsPage([JobInfo.from_row(row) for row in rows], frame.get("next"))


def check_page_size(page_size: int) -> int:
    """A `jobs` page size the daemon accepts (1 to `MAX_PAGE`), else `ValueError`."""
    if type(page_size) is not int or not 1 <= page_size <= MAX_PAGE:
        raise ValueError(f"page_size must be an integer from 1 to {MAX_PAGE}; got {page_size!r}")
    return page_size


def check_limit(limit: int | None) -> int | None:
    """A positive row count, or None for no limit; else `ValueError`."""
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ValueError(f"limit must be a positive integer or None; got {limit!r}")
    return limit
