"""The process's limit on open descriptors: raised at start, readable by any service.

Every connection costs a descriptor, and the soft limit that shells hand out
(often 1,024) is far below what `--max-connections` allows: 1,010 idle
websocket connections once took them all and the Gloom ports stopped
accepting (issue 18).  So the daemon raises its soft limit to the hard limit
at start (`raise_soft_limit`), and services that must budget descriptors
(the websocket service keeps room for the Gloom ports) read the result from
`descriptor_limit()`.

`fit_connection_caps` then makes every cap fit that limit, so that no
connection a cap admits can fail for want of a descriptor, and so that the
websocket service can never starve the Gloom ports:

    room = limit - descriptors open at start - RESERVE - one per --ws-max-jobs
    if both caps fit in room: both stand
    else: websocket cap = min(requested, room // 4); Gloom cap = min(requested, room - that)

Each lowered cap is logged at start.  A room below one connection per
service stops the start with one line.
"""

from __future__ import annotations

import os
import resource

__all__ = [
    "DESCRIPTOR_RESERVE",
    "DescriptorBudgetError",
    "descriptor_limit",
    "fit_connection_caps",
    "open_descriptors",
    "raise_soft_limit",
]

#: Descriptors kept for everything that is neither a connection nor a job:
#: listeners, the epoll set, log and state files, the journal, psutil's reads
#: of /proc, imports.
DESCRIPTOR_RESERVE = 64

#: Where Linux caps any process's descriptors (RLIMIT_NOFILE cannot exceed it).
_NR_OPEN = "/proc/sys/fs/nr_open"


class DescriptorBudgetError(OSError):
    """The descriptor limit leaves a service no room at all.

    An OSError so that gloomd's start-up reports it like a port that is taken:
    one line and exit status 1.
    """


def open_descriptors() -> int:
    """Descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir holds
    except OSError:
        return 0


def fit_connection_caps(
    limit: int,
    *,
    gloom: int,
    ws: int = 0,
    ws_jobs: int = 0,
    open_now: int = 0,
    reserve: int = DESCRIPTOR_RESERVE,
) -> tuple[int, int]:
    """The Gloom and websocket connection caps, lowered to fit `limit` (module docstring).

    `ws` is 0 when the websocket service is off.  Raises DescriptorBudgetError
    when not even one connection per service fits.
    """
    room = limit - open_now - reserve - ws_jobs
    needed = 2 if ws else 1
    if room < needed:
        raise DescriptorBudgetError(
            f"no descriptors left for connections: RLIMIT_NOFILE {limit} - {open_now} open"
            f" - {reserve} reserved - {ws_jobs} (--ws-max-jobs) = {room};"
            " raise the limit (ulimit -n) or lower --ws-max-jobs"
        )
    if gloom + ws <= room:
        return gloom, ws
    ws_fit = min(ws, max(1, room // 4)) if ws else 0
    return min(gloom, room - ws_fit), ws_fit


def descriptor_limit() -> int:
    """Descriptors this process may have open: the soft RLIMIT_NOFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft)


def raise_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    An unlimited hard limit is taken as the kernel's `nr_open`.  If the
    kernel refuses, the limit stays as it was (and is returned).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return descriptor_limit()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass
    return descriptor_limit()


def _finite(limit: int) -> int:
    if limit != resource.RLIM_INFINITY:
        return limit
    try:
        with open(_NR_OPEN, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20
