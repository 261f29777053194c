"""The websocket service's caps and timeouts, and the descriptor budget they fit in.

The websocket service shares one process, and so one ``RLIMIT_NOFILE``, with
the Gloom ports.  Measured before these caps: 1,010 idle websocket
connections used up a 1,024-descriptor limit and the Gloom ports stopped
accepting.  The rule that prevents it, computed once at start:

    budget = RLIMIT_NOFILE (soft) - descriptors already open
             - Gloom's --max-connections - one per --ws-max-jobs - RESERVE
    websocket connection cap = min(--ws-max-connections, budget)

The Gloom ports keep room for all the connections they are allowed; each
running job may hold one descriptor of its own; :data:`DESCRIPTOR_RESERVE`
covers the rest of the process (listeners, the scheduler's state file, psutil's
reads of ``/proc``, log files, imports).  A budget below one connection means
the service cannot run without endangering the Gloom ports: gloomd refuses to
start and says which numbers to change.  Every accepted websocket connection
counts against the cap from ``accept`` on, handshake included; over it, the
connection gets an HTTP 503 and is closed at once.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .fdlimit import descriptor_limit

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_MESSAGE",
    "DESCRIPTOR_RESERVE",
    "DescriptorBudgetError",
    "WsLimits",
    "connection_cap",
    "positive_float",
    "positive_int",
    "process_descriptors",
]

#: Open websocket connections (pykit's default `max_client_number`).
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds a connection may stay open without sending its job description.
#: pykit clients send it right after the handshake.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Seconds from accept to a complete opening handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: Jobs running at once (thread and async).  A job holds its description (up to
#: --ws-max-message) for as long as it runs, and a plain function holds a thread.
DEFAULT_MAX_JOBS = 256
#: Largest message accepted (trio-websocket's default): over it, close 1009.
DEFAULT_MAX_MESSAGE = 1024 * 1024
#: Descriptors kept for everything that is neither a connection nor a job.
DESCRIPTOR_RESERVE = 64


class DescriptorBudgetError(OSError):
    """The descriptor limit leaves the websocket service no room.

    An OSError so that gloomd's start-up reports it like a port that is taken:
    one line and exit status 1.
    """


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Every cap and timeout of the websocket service (the ``--ws-*`` flags)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_jobs: int = DEFAULT_MAX_JOBS
    max_message: int = DEFAULT_MAX_MESSAGE

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_jobs", "max_message"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("idle_timeout", "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


def process_descriptors() -> tuple[int, int]:
    """This process's soft ``RLIMIT_NOFILE`` and the number of descriptors open now."""
    import psutil  # only when the websocket service starts: importing it costs about 15 ms

    return descriptor_limit(), psutil.Process().num_fds()


def connection_cap(
    requested: int,
    *,
    nofile: int,
    open_descriptors: int,
    gloom_connections: int,
    max_jobs: int,
    reserve: int = DESCRIPTOR_RESERVE,
) -> int:
    """The websocket connection cap: `requested`, lowered to fit the budget (module docstring).

    Raises DescriptorBudgetError when not even one connection fits.
    """
    budget = nofile - open_descriptors - gloom_connections - max_jobs - reserve
    if budget < 1:
        raise DescriptorBudgetError(
            f"the websocket service has no descriptors left: RLIMIT_NOFILE {nofile}"
            f" - {open_descriptors} open - {gloom_connections} (--max-connections)"
            f" - {max_jobs} (--ws-max-jobs) - {reserve} reserved = {budget}; raise the limit"
            " (ulimit -n) or lower --max-connections or --ws-max-jobs"
        )
    return min(requested, budget)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number greater than 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value
